"""Smoke test of the benchmark suite: every script runs on the fixtures with the stand-in models
(tiny counts) and writes its JSON, and BENCHMARKS.md is rendered from those files. Timings are
not asserted (they depend on the machine); behaviour is: no 5xx, no dropped connection, every
invalid upload a 4xx, the quantisation decision recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stand_in_models import build_stand_in_models, load_script

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "busbra"


class QuickRun:
    """``benchmarks/run.py --quick`` one step at a time, each step once, into one results folder
    (each run renders the report from every result there so far): a test waits only for the
    steps it reads."""

    def __init__(self, tmp: Path) -> None:
        self.models = build_stand_in_models(tmp / "models")
        self.out, self.md, self.quant = tmp / "results", tmp / "BENCHMARKS.md", tmp / "quant"
        self.done: set[str] = set()

    def steps(self, *names: str) -> tuple[Path, Path]:
        todo = [n for n in names if n not in self.done]
        if todo:
            proc = subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--data",
                 str(FIXTURES), "--models", str(self.models), "--out", str(self.out), "--md",
                 str(self.md), "--quant-work", str(self.quant), "--only", *todo],
                capture_output=True, text=True, timeout=600, cwd=REPO,
            )
            assert proc.returncode == 0, proc.stderr[-4000:]
            self.done.update(todo)
        return self.out, self.md


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> QuickRun:
    return QuickRun(tmp_path_factory.mktemp("bench"))


def _load(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    assert path.is_file(), f"{name}.json not written"
    return json.loads(path.read_text())


def test_latency_compares_both_backends_on_the_same_pipeline(quick):
    lat = _load(quick.steps("latency")[0], "latency")
    for backend in ("onnxruntime", "torch_eager"):
        total = lat["analysis"][backend]["total_ms"]
        assert total["n"] == 2 and total["p50"] > 0
        assert {"decode", "segment", "classify", "heatmap", "measure"} <= set(
            lat["analysis"][backend]["stages_ms_p50"]
        )
    assert lat["ratio_p50_torch_over_ort"] > 0
    assert lat["matmul"]["peak_gflops"] > 0
    assert lat["models"]["stand_in"] is True
    # The stand-ins have no convolution: nothing to count, and the bound says so.
    assert lat["total_gflops_per_image"] == 0


def test_throughput_runs_busdx_predict(quick):
    tp = _load(quick.steps("throughput")[0], "throughput")
    assert tp["images"] == 2 and tp["analysed"] == 2 and tp["errors"] == 0
    assert tp["images_per_s_wall"] > 0


def test_load_test_answers_every_request_without_5xx(quick):
    lt = _load(quick.steps("load_test")[0], "load_test")
    assert lt["address"].startswith("http://127.0.0.1:")
    assert lt["requests"] == lt["planned_requests"] == 24
    assert lt["server_errors_5xx"] == 0
    assert lt["connection_errors"] == 0
    assert lt["valid_not_200"] == 0 and lt["invalid_not_4xx"] == 0
    assert lt["errors_without_detail"] == 0
    assert lt["health"]["ok"] > 0 and lt["health"]["failed"] == 0
    assert lt["memory"]["peak_vmhwm_mb"] > 0
    # clients that start an upload and stall get a 408 and hold no one up
    assert lt["slow_clients"]["statuses"] == [408, 408]
    assert lt["checks"]["slow_clients_timed_out"]


def test_tuning_recorded(quick):
    tune = _load(quick.steps("tune_ort")[0], "tune_ort")
    assert len(tune["options"]) >= 4 and tune["batches"] and tune["concurrency"]


def test_quantisation_recorded(quick):
    q = _load(quick.steps("quantize")[0], "quantization")
    assert set(q["results"]) == {"fp32", "int8_segmenter", "int8_classifier", "int8_both"}
    assert q["decision"]["kept"] in q["results"]
    assert q["quantisation"]["classifier"]["same_output_shapes"] is True


def test_markdown_is_rendered_from_the_results(quick):
    out, md = quick.steps("tune_ort", "latency", "throughput", "load_test", "quantize")
    text = md.read_text()
    lat = _load(out, "latency")
    for heading in ("## Summary", "## Latency", "## FLOPs", "## ONNX Runtime settings",
                    "## Throughput", "## Load test", "## int8 static quantisation"):
        assert heading in text
    assert f"{lat['analysis']['onnxruntime']['total_ms']['p50']:.1f}" in text
    assert "stand-in models" in text


def test_decode_reads_one_frame_of_a_loop_without_copying_it(quick):
    out, md = quick.steps("decode")
    dec = _load(out, "decode")
    loops = [c for c in dec["cases"] if c["frames"] > 1]
    assert {c["frame"] for c in loops} >= {1, loops[-1]["frames"]}
    assert all(c["ms"]["p50"] > 0 and c["peak_mb"] > 0 for c in dec["cases"])
    assert dec["targets"]["memory_met"], dec["targets"]
    assert "Decoding large inputs" in md.read_text()


def test_postprocess_times_both_sources_on_the_same_images(quick):
    out, md = quick.steps("postprocess")
    pp = _load(out, "postprocess")
    for side in ("before", "after"):
        assert pp[side]["non_model_ms"]["n"] == pp[side]["pictures_ms"]["n"] == 2
        assert {"decode", "segment", "classify", "measure"} <= set(pp[side]["stages_ms_p50"])
    assert set(pp["met"]) == {"non_model", "pictures"}
    assert "The work around the networks" in md.read_text()


def test_postprocess_times_the_working_tree_alone_by_default(quick, tmp_path):
    """Without --before no other revision is exported: an old one may not read today's models."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "postprocess.py"), "--data", str(FIXTURES),
         "--models", str(quick.models), "--out", str(out), "-n", "2", "--rounds", "1",
         "--warmup", "0"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    pp = _load(out, "postprocess")
    assert pp["before"] is None and pp["after"]["non_model_ms"]["n"] == 2
    md = tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "write_benchmarks.py"), "--results",
                    str(out), "--out", str(md)], check=True, cwd=REPO)
    text = md.read_text()
    assert "| ms per image | working tree |" in text and "(before" not in text


def test_a_failed_step_is_reported_and_the_others_still_run():
    run_step = load_script(REPO / "benchmarks" / "run.py").run_step
    assert run_step([sys.executable, "-c", "raise SystemExit(3)"], timeout=60) is None
    assert run_step([sys.executable, "-c", "pass"], timeout=60) >= 0
