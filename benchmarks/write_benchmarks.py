"""Render BENCHMARKS.md from the JSON results under benchmarks/results/ (no number by hand).

    python benchmarks/write_benchmarks.py [--results benchmarks/results] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bench_common import REPO, RESULTS_DIR, setup_logging

log = logging.getLogger("benchmarks.write")

NAMES = ("latency", "latency_int8", "latency_one_network", "latency_three_pass", "tune_ort",
         "throughput", "ray_scaling", "load_test", "quantization", "decode", "postprocess")


def load_results(directory: Path) -> dict[str, dict]:
    out = {}
    for name in NAMES:
        path = directory / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "**not met**")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return lines + [""]


def conditions(results: dict[str, dict]) -> list[str]:
    lines = ["## Conditions", ""]
    any_result = results.get("latency") or next(iter(results.values()))
    m = any_result["machine"]
    lines.append(f"- CPU: {m['cpu']}, {m['usable_cpus']} usable cores; Python {m['python']}; "
                 + ", ".join(f"{k} {v}" for k, v in any_result.get("versions", {}).items()) + ".")
    models = any_result.get("models", {})
    folder = str(models.get("dir"))
    # the repository's own folder by its name: a checkout's path says nothing to a reader
    folder = "models/" if folder.rstrip("/").endswith("/models") and Path(folder).resolve() == (
        REPO / "models").resolve() else folder
    lines.append(f"- Models: `{folder}`, version `{models.get('version')}`"
                 + (" (**stand-in models, not the trained ones**)" if models.get("stand_in")
                    else "") + ".")
    versions: dict[str, list[str]] = {}
    for name, r in results.items():
        version = (r.get("models") or {}).get("version")
        if version:  # steps that time no network record none
            versions.setdefault(str(version), []).append(name)
    if len(versions) > 1:  # steps not measured again since the models changed say so
        lines.append("- Measured with release " + "; with release ".join(
            f"`{v}`: {', '.join(names)}" for v, names in versions.items()) + ".")
    contended = [n for n, r in results.items() if r["machine"].get("contended")]
    if contended:
        lines.append(f"- **Warning: other heavy busdx jobs were running during {', '.join(contended)}"
                     "; those timings are pessimistic.**")
    else:
        lines.append("- No other heavy busdx job (training, evaluation) ran during the "
                     "measurements.")
    lines.append("- Measured at (UTC): " + ", ".join(
        f"{n} {r['machine']['measured_at_utc']}" for n, r in results.items()) + ".")
    return lines + [""]


def summary(results: dict[str, dict]) -> list[str]:
    rows = []
    lat = results.get("latency")
    if lat:
        ort = lat["analysis"]["onnxruntime"]["total_ms"]
        served = lat.get("analysis_served_onnxruntime")
        if served:
            rows.append(["Full analysis p50, ONNX Runtime alone, as served (ms)", "<= 60",
                         _f(served["total_ms"]["p50"]), _ok(lat["targets"]["p50_met"])])
            rows.append(["Full analysis p95, ONNX Runtime alone, as served (ms)", "recorded",
                         _f(served["total_ms"]["p95"]), ""])
            rows.append(["Full analysis p50, ONNX Runtime interleaved with torch (ms)", "recorded",
                         _f(ort["p50"]), ""])
        else:  # results from before the served timing
            rows.append(["Full analysis p50, ONNX Runtime (ms)", "<= 60", _f(ort["p50"]),
                         _ok(lat["targets"]["p50_met"])])
            rows.append(["Full analysis p95, ONNX Runtime (ms)", "recorded", _f(ort["p95"]), ""])
        rows.append(["Speed-up over torch eager (p50 ratio)", ">= 2x",
                     f"{_f(lat['ratio_p50_torch_over_ort'], 2)}x",
                     _ok(lat["targets"]["speedup_met"])])
        calls = lat["model_calls_batch1"]
        ort_calls = calls["onnxruntime"]["segmenter"]["p50"] + calls["onnxruntime"]["classifier"]["p50"]
        pt_calls = calls["torch_eager"]["segmenter"]["p50"] + calls["torch_eager"]["classifier"]["p50"]
        rows.append(["Speed-up of the two model calls alone (p50 ratio)", "context",
                     f"{_f(pt_calls / ort_calls, 2)}x", ""])
        rows.append(["Compute bound of the two models (ms)", "recorded",
                     _f(lat["compute_bound_ms"]), ""])
    lat8 = results.get("latency_int8")
    if lat8:
        ort8 = lat8["analysis"]["onnxruntime"]["total_ms"]
        rows.append(["Full analysis p50 with the passing int8 mix, not installed (ms)", "<= 60",
                     _f(ort8["p50"]), _ok(lat8["targets"]["p50_met"])])
    # releases measured and held back for their accuracy: the one-network release
    # (docs/generalisation_results.md) and the three-pass classifier (docs/selection_rules.md)
    for name, what in (("latency_one_network", "the one-network release"),
                       ("latency_three_pass", "the three-pass classifier")):
        if name in results:
            served = results[name]["analysis_served_onnxruntime"]["total_ms"]
            rows.append([f"Full analysis p50, {what} held back (ms)", "<= 60",
                         _f(served["p50"]), _ok(served["p50"] <= 60.0)])
    tp = results.get("throughput")
    if tp:
        rows.append(["`busdx predict` over fold 5 (images/s, wall)", "recorded",
                     _f(tp["images_per_s_wall"]), ""])
    lt = results.get("load_test")
    if lt:
        c = lt["checks"]
        rows.append([f"Load test: 5xx in {lt['requests']} requests", "0",
                     str(lt["server_errors_5xx"]), _ok(c["no_5xx"])])
        rows.append(["Load test: dropped connections", "0", str(lt["connection_errors"]),
                     _ok(c["no_dropped_connections"])])
        rows.append(["Load test: p95 latency (ms)", "recorded", _f(lt["latency_ms_all"]["p95"]),
                     ""])
        rows.append(["Load test: memory growth after the run (MB)", "<= 50",
                     _f(lt["memory"]["growth_after_run_mb"]),
                     _ok(c["memory_growth_within_50mb"])])
        rows.append(["Load test: health answered throughout", "all",
                     f"{lt['health']['ok']}/{lt['health']['requests']}",
                     _ok(c["health_answered_throughout"])])
        rows.append(["Server peak memory, VmHWM (MB)", "recorded",
                     _f(lt["memory"]["peak_vmhwm_mb"]), ""])
        slow = lt.get("slow_clients")
        if slow:  # results written before the slow clients existed have none
            rows.append([f"Load test: stalled uploads answered 408 (timeout "
                         f"{_f(slow['upload_timeout_s'])} s)", f"all {slow['clients']}",
                         str(sum(s == 408 for s in slow["statuses"])),
                         _ok(c["slow_clients_timed_out"])])
    dec = results.get("decode")
    if dec:
        t = dec["targets"]
        rows.append(["One frame of a cine loop: share of a longer loop's size in the peak "
                     "memory", f"<= {_f(t['memory_share'], 2)}", _f(t["loop_growth_in_peak"], 3),
                     _ok(t["memory_met"])])
    pp = results.get("postprocess")
    if pp:
        for part, what in (("non_model", "Analysis without the two networks, decode to "
                            "measurements, p50 (ms)"), ("pictures", "The API's six PNGs, p50 (ms)")):
            before = (f" (before {_f(pp['before'][f'{part}_ms']['p50'])})" if pp.get("before")
                      else "")
            rows.append([what, f"<= {_f(pp['targets_p50_ms'][part])}",
                         f"{_f(pp['after'][f'{part}_ms']['p50'])}{before}", _ok(pp["met"][part])])
    q = results.get("quantization")
    if q:
        rows.append(["int8 static quantisation", "keep if Dice and AUC drop < 0.005",
                     f"passes: {q['decision']['kept']} (fp32 stays in models/)"
                     if q["decision"]["kept"] != "fp32" else "fp32 kept", ""])
    lines = ["## Summary", ""] + _table(["What", "Target", "Measured", ""], rows)
    short = [r[0] for r in rows if r[3] == "**not met**"]
    lines.append("Targets not met: " + ("; ".join(short) + "." if short else "none."))
    return lines + [""]


def latency_section(lat: dict, title: str = "Latency: ONNX Runtime against torch eager") -> list[str]:
    a = lat["analysis"]
    ort, pt = a["onnxruntime"], a["torch_eager"]
    lines = [f"## {title}", "",
             f"`benchmarks/latency.py`: {lat['images']['n']} fold-5 images, {lat['warmup']} "
             f"warm-up runs per backend, {lat['threads']} threads for both backends, the two "
             "backends interleaved image by image. Both run the product's "
             "`busdx.inference.analyze` on the file's bytes (decode, segment, classify, heatmap, "
             "measurements; no PNG overlays); only the two model calls differ.", ""]
    stages = list(ort["stages_ms_p50"])
    rows = [["p50 total", ort["total_ms"]["p50"], pt["total_ms"]["p50"]],
            ["p95 total", ort["total_ms"]["p95"], pt["total_ms"]["p95"]],
            ["mean total", ort["total_ms"]["mean"], pt["total_ms"]["mean"]]]
    rows += [[f"p50 {s}", ort["stages_ms_p50"].get(s), pt["stages_ms_p50"].get(s)] for s in stages]
    lines += _table(["ms per image", "ONNX Runtime", "torch eager"], rows)
    served = lat.get("analysis_served_onnxruntime")
    if served:
        lines.append(
            f"The same images with ONNX Runtime alone, as the server runs it (no torch in the "
            f"loop), afterwards: p50 {_f(served['total_ms']['p50'])} ms, p95 "
            f"{_f(served['total_ms']['p95'])} ms. The 60 ms target reads this number: the server "
            "runs no torch.")
        lines.append("")
    lines.append(f"Ratio torch / ONNX Runtime: p50 {_f(lat['ratio_p50_torch_over_ort'], 2)}x, "
                 f"p95 {_f(lat['ratio_p95_torch_over_ort'], 2)}x.")
    decode = ort["stages_ms_p50"].get("decode")
    if decode is not None and ort["total_ms"]["p50"]:
        lines.append(f"Decoding (PNG to float grey) takes {_f(decode)} ms p50, "
                     f"{_f(100 * decode / ort['total_ms']['p50'])}% of the analysis.")
    lines.append("")
    calls = lat["model_calls_batch1"]
    rows = [[part, calls["onnxruntime"][part]["p50"], calls["torch_eager"][part]["p50"]]
            for part in ("segmenter", "classifier")]
    crops = lat.get("classifier_crops_per_image", 1)
    lines += [f"Model calls alone, as one analysis makes them (segmenter on one image, classifier "
              f"on the batch of {crops} lesion crop{'s' if crops != 1 else ''}; p50 ms):", ""]
    lines += _table(["model", "ONNX Runtime", "torch eager"], rows)
    ov = lat["analysis_with_overlays_onnxruntime"]
    lines.append(f"With the API's PNG overlays (outline, heatmap, composites) the ONNX Runtime "
                 f"analysis takes p50 {_f(ov['total_ms']['p50'])} ms / p95 "
                 f"{_f(ov['total_ms']['p95'])} ms ({ov['total_ms']['n']} images; rendering p50 "
                 f"{_f(ov['stages_ms_p50'].get('render'))} ms).")
    lines.append("")
    w = lat["torch_weights"]
    d = lat["ort_vs_torch_max_abs_diff"]
    lines.append(f"Torch weights: segmenter from {w['segmenter']}; classifier from "
                 f"{w['classifier']}. Largest output difference between the two backends on one "
                 f"input: segmenter {d['segmenter']:.2e}, classifier {d['classifier']:.2e} "
                 "(about 1e-5 means the same weights; a large value means the checkpoint is not "
                 "the one exported, which leaves the timing valid: latency does not depend on "
                 "weight values).")
    return lines + [""]


def flops_section(lat: dict) -> list[str]:
    f = lat["flops"]
    mm = lat["matmul"]
    lines = ["## FLOPs and the compute bound", ""]
    crops = lat.get("classifier_crops_per_image", 1)
    rows = [[part, f[part]["macs"] / 1e6, f[part]["gflops"]] for part in ("segmenter", "classifier")]
    rows.append([f"per analysis (segmenter + {crops} x classifier)",
                 (f["segmenter"]["macs"] + crops * f["classifier"]["macs"]) / 1e6,
                 lat["total_gflops_per_image"]])
    lines += _table(["model", "MMACs per call", "GFLOPs per call"], rows)
    lines.append(
        f"Counted from the ONNX graphs (Conv, ConvTranspose, MatMul/Gemm, Einsum; element-wise "
        f"ops and resizes excluded). This CPU's float32 matmul: {_f(mm.get('numpy_gflops'))} "
        f"GFLOP/s with numpy's BLAS, {_f(mm.get('torch_gflops'))} GFLOP/s with torch "
        f"({mm['size']}x{mm['size']}, {lat['threads']} threads). At the best of these, the two "
        f"models cannot take less than **{_f(lat['compute_bound_ms'])} ms** per image; ONNX Runtime "
        f"takes {_f(lat['ort_model_calls_p50_ms'])} ms for the two calls, "
        f"{_f(100 * (lat['fraction_of_matmul_peak'] or 0))}% of matmul speed (depthwise "
        "convolutions and the decoder's upsampling are memory-bound, not compute-bound).")
    total = lat["analysis"]["onnxruntime"]["total_ms"]["p50"]
    rest = total - lat["ort_model_calls_p50_ms"]
    lines.append("")
    lines.append(f"The rest of the analysis (decode, letterbox, sigmoid and resize back, largest "
                 f"component and hole filling, crop, heatmap, measurements) takes about "
                 f"{_f(rest)} ms (p50 total {_f(total)} ms minus the two model calls), so even "
                 f"at the compute bound the full analysis would take about "
                 f"{_f(rest + lat['compute_bound_ms'])} ms.")
    return lines + [""]


def tuning_section(t: dict) -> list[str]:
    lines = ["## ONNX Runtime settings", "",
             "`benchmarks/tune_ort.py` (random inputs; run time does not depend on pixel values). "
             f"The served sessions use {t['served_settings']['threads']} intra-op threads, "
             f"graph optimisation `{t['served_settings']['level']}`, and are made once per "
             "process (`Models.load`). They also fix the batch size one analysis uses (segmenter "
             "1; classifier 1 when the card has one crop), so ONNX Runtime folds the graphs' "
             "shape arithmetic at load; the sweeps below keep the batch dynamic, as they vary "
             "it.", ""]
    rows = [[r["threads"], r["level"], "on" if r["spinning"] else "off", r["segmenter"],
             r["classifier"], r["both_p50_ms"]] for r in t["options"]]
    lines += _table(["threads", "graph level", "spinning", "segmenter p50 ms",
                     "classifier p50 ms", "both"], rows)
    rows = [[r["model"], r["batch"], r["per_image_ms"]] for r in t["batches"]]
    lines += ["Batching (ms per image, p50):", ""]
    lines += _table(["model", "batch", "ms per image"], rows)
    rows = [[r["workers"], r["threads"], "on" if r["spinning"] else "off", r["images_per_s"],
             r["latency_ms"]["p50"], r["latency_ms"]["p95"]] for r in t["concurrency"]]
    lines += ["Concurrent analyses on shared sessions (segmenter + classifier per image):", ""]
    lines += _table(["analyses at once", "threads per session", "spinning", "images/s",
                     "p50 ms", "p95 ms"], rows)
    lines += tuning_conclusions(t)
    return lines


def tuning_conclusions(t: dict) -> list[str]:
    best = t["best_options"]
    served = next((r for r in t["options"] if r["threads"] == t["served_settings"]["threads"]
                   and r["level"] == "all" and not r["spinning"]), None)
    lines = [f"Fastest single-image setting: {best['threads']} thread(s), graph level "
             f"`{best['level']}`, spinning {'on' if best['spinning'] else 'off'} "
             f"({_f(best['both_p50_ms'])} ms for both models)"
             + (f"; the served setting (spinning off) takes {_f(served['both_p50_ms'])} ms when one "
                "model runs alone over and over, the case where spinning helps." if served else ".")]
    gains = []
    for model in ("segmenter", "classifier"):
        rows = {r["batch"]: r["per_image_ms"] for r in t["batches"] if r["model"] == model}
        if 1 in rows and rows[1]:
            top = max(rows)
            saved = 100 * (1 - rows[top] / rows[1])
            gains.append(f"{model} {_f(rows[1])} ms per image at batch 1, {_f(rows[top])} at "
                         f"batch {top} ({abs(saved):.0f}% {'saved' if saved >= 0 else 'lost'})")
    if gains:
        lines.append("Batching: " + "; ".join(gains) + ".")
    pick = {(r["workers"], r["threads"], r["spinning"]): r for r in t["concurrency"]}
    if (1, 2, True) in pick and (1, 2, False) in pick:
        on, off = pick[(1, 2, True)], pick[(1, 2, False)]
        lines.append(
            f"Spinning: with the segmenter and the classifier run in turn (each session has its "
            f"own thread pool, as in the pipeline), 2 threads take p50 "
            f"{_f(on['latency_ms']['p50'])} ms with spinning on and "
            f"{_f(off['latency_ms']['p50'])} ms with it off; two analyses at once reach "
            f"{_f(pick.get((2, 2, True), {}).get('images_per_s'))} against "
            f"{_f(pick.get((2, 2, False), {}).get('images_per_s'))} images/s. A pool that spins "
            "after its run steals the cores the next model needs, so the served sessions turn "
            "spinning off (`busdx.inference.models`); the timed benchmarks ran with that setting."
        )
    two = [r for r in t["concurrency"] if r["workers"] == 2]
    if two:
        top = max(two, key=lambda r: r["images_per_s"])
        lines.append(f"With two analyses at once (the API's limit), the best throughput is "
                     f"{_f(top['images_per_s'])} images/s at {top['threads']} thread(s) per session, "
                     f"spinning {'on' if top['spinning'] else 'off'}.")
    return lines + [""]


def throughput_section(tp: dict) -> list[str]:
    return ["## Throughput of `busdx predict`", "",
            f"`{tp['command']}`: {tp['analysed']} of {tp['images']} images analysed "
            f"({tp['errors']} errors) in {_f(tp['wall_s'])} s wall time: "
            f"**{_f(tp['images_per_s_wall'])} images/s** including start-up and model loading "
            f"({_f(tp['startup_and_io_s'])} s outside the analyses), "
            f"{_f(tp['images_per_s_analysis'])} images/s over the analyses alone (per image p50 "
            f"{_f(tp['per_image_ms']['p50'])} ms, p95 {_f(tp['per_image_ms']['p95'])} ms).", ""]


def ray_section(rs: dict) -> list[str]:
    lines = ["## `busdx predict` on Ray", "",
             f"`benchmarks/ray_scaling.py`: the same {rs['images']} fold-5 images through "
             "`busdx predict`, plain and with `--ray` (a local Ray instance started for the run, "
             "one ONNX Runtime thread per worker), each a fresh process timed from the outside. "
             "Steady state: the rows after the first, over the time after the first was "
             "written (start-up, model loading and Ray's start left out). Overhead per image: "
             "steady time per image times the workers, less the plain one-thread run's.", "",
             "| run | wall (s) | first row (s) | images/s, wall | images/s, steady | "
             "speed-up, steady | overhead per image (ms) |", "|---|---|---|---|---|---|---|"]
    for r in rs["runs"]:
        lines.append(f"| `{r['options']}` | {_f(r['wall_s'])} | {_f(r['first_row_s'])} | "
                     f"{_f(r['images_per_s_wall'])} | {_f(r['images_per_s_steady'])} | "
                     f"{_f(r.get('speedup_steady'))} | {_f(r.get('overhead_ms_per_image'))} |")
    return lines + ["", "Speed-up and overhead are against the plain run with `--threads 1`. "
                    "On this 2-core machine Ray pays its start-up (a few seconds) on every run: it "
                    "is for archives and clusters, where the steady rate is what counts.", ""]


def load_section(lt: dict) -> list[str]:
    m, h = lt["memory"], lt["health"]
    lines = ["## Load test", "",
             f"`benchmarks/load_test.py`: `busdx serve` on {lt['address']} (loopback only), "
             f"{lt['clients']} concurrent clients, {lt['requests']} POST /api/analyze requests "
             f"({int(100 * lt['invalid_fraction'])}% invalid: {', '.join(lt['invalid_kinds'])}; "
             f"valid: {lt['distinct_valid_files']} distinct fold-5 files as PNG and JPEG), "
             f"GET /api/health every 200 ms throughout. {lt['warmup_requests']} warm-up requests "
             "at the same concurrency before the run (the memory baseline).", ""]
    rows = [["statuses", ", ".join(f"{k}: {v}" for k, v in lt["statuses"].items())],
            ["5xx", str(lt["server_errors_5xx"])],
            ["dropped connections", str(lt["connection_errors"])],
            ["valid files not answered 200", str(lt["valid_not_200"])],
            ["invalid files not answered 4xx", str(lt["invalid_not_4xx"])],
            ["4xx without a JSON detail", str(lt["errors_without_detail"])],
            ["wall time (s), requests/s", f"{_f(lt['wall_s'])}, {_f(lt['requests_per_s'])}"],
            ["latency p50 / p95 (ms), all", f"{_f(lt['latency_ms_all']['p50'])} / "
             f"{_f(lt['latency_ms_all']['p95'])}"],
            ["latency p50 / p95 (ms), valid", f"{_f(lt['latency_ms_valid'].get('p50'))} / "
             f"{_f(lt['latency_ms_valid'].get('p95'))}"],
            ["latency p50 / p95 (ms), invalid", f"{_f(lt['latency_ms_invalid'].get('p50'))} / "
             f"{_f(lt['latency_ms_invalid'].get('p95'))}"],
            *([["stalled uploads (start, then nothing)",
                f"{lt['slow_clients']['clients']}, answered {lt['slow_clients']['statuses']} "
                f"after {lt['slow_clients']['seconds']} s"]] if lt.get("slow_clients") else []),
            ["health answered", f"{h['ok']} of {h['requests']}, p95 "
             f"{_f(h['latency_ms'].get('p95'))} ms, longest gap "
             f"{_f(h['longest_gap_between_answers_s'], 2)} s"],
            ["RSS after start / after warm-up / after run (MB)",
             f"{_f(m['rss_after_start_mb'])} / {_f(m['rss_after_warmup_mb'])} / "
             f"{_f(m['rss_after_run_mb'])}"],
            ["growth after the run vs warmed-up (MB)", _f(m["growth_after_run_mb"])],
            ["peak RSS, VmHWM (MB)", _f(m["peak_vmhwm_mb"])],
            ["all checks passed", _f(lt["passed"])]]
    lines += _table(["", "value"], rows)
    lines.append("Latency here includes queueing: the API runs at most two analyses at once, so "
                 "16 clients wait for each other by design (bounded memory).")
    return lines + [""]


def quant_section(q: dict) -> list[str]:
    lines = ["## int8 static quantisation", "",
             f"`benchmarks/quantize.py`: {q['method']}; calibrated on "
             f"{q['calibration_images']['n']} {q['calibration_images']['split']} images; judged "
             f"on {q['evaluation_images']['n']} images of the {q['evaluation_images']['split']}. "
             f"Dice is the served mask's (largest component, holes filled); AUC is end to end "
             f"(predicted masks -> crops -> classifier). Tolerance: drops under "
             f"{q['decision']['tolerance']}.", ""]
    rows = []
    for name, r in q["results"].items():
        v = q["decision"]["verdicts"].get(name, {})
        rows.append([name, r["segmenter"], r["classifier"], f"{r['dice_served']:.4f}",
                     f"{r['auc']:.4f}", r["model_calls_p50_ms"],
                     "" if name == "fp32" else f"{v['dice_drop']:+.4f}",
                     "" if name == "fp32" else f"{v['auc_drop']:+.4f}",
                     "baseline" if name == "fp32" else ("passes" if v["passes"] else "fails")])
    lines += _table(["mix", "segmenter", "classifier", "Dice (val)", "AUC (val)",
                     "model calls p50 ms", "Dice drop", "AUC drop", "verdict"], rows)
    qs = q["quantisation"]
    lines.append(f"Model files: segmenter {qs['segmenter']['fp32_megabytes']} -> "
                 f"{qs['segmenter']['megabytes']} MB, classifier "
                 f"{qs['classifier']['fp32_megabytes']} -> {qs['classifier']['megabytes']} MB.")
    kept = q["decision"]["kept"]
    if kept == "fp32":
        lines.append("**Decision: no int8 mix is both within tolerance and faster; the fp32 "
                     "models stay.**")
    else:
        lines.append(f"**Decision: `{kept}` passes and is the fastest passing mix** (models in "
                     f"`{q['kept_models_dir']}`; shipping them means re-running the model card's "
                     "evaluations on them).")
    return lines + [""]


def decode_section(dec: dict) -> list[str]:
    rows = [[c["input"], "first" if c["frame"] == 1 and c["frames"] > 1 else
             f"{c['frame']} of {c['frames']}" if c["frames"] > 1 else "-",
             _f(c["file_mb"]), _f(c["ms"]["p50"]), _f(c["ms"]["p95"]), _f(c["peak_mb"])]
            for c in dec["cases"]]
    return ["## Decoding large inputs", "",
            "`benchmarks/decode.py`: one frame of an uncompressed DICOM cine loop is read and "
            "decoded from the file as it lies in memory, without a second copy of the loop "
            f"(median of {dec['reps']} runs; peak: what Python allocates during the decode).",
            "", *_table(["Input", "Frame", "File (MB)", "p50 (ms)", "p95 (ms)", "Peak (MB)"],
                        rows)]


# what a timed "before" revision was, where it marks a change worth naming
BEFORE_WAS = {"4237d64": "image processing in numpy and Pillow, before the move to OpenCV"}


def postprocess_section(pp: dict) -> list[str]:
    before, after = pp.get("before"), pp["after"]
    stages = [s for s in after["stages_ms_p50"] if s != "total"]
    sides = [before, after] if before else [after]
    rows = [["decode to measurements, p50", *(x["non_model_ms"]["p50"] for x in sides)],
            ["decode to measurements, p95", *(x["non_model_ms"]["p95"] for x in sides)],
            ["the API's six PNGs, p50", *(x["pictures_ms"]["p50"] for x in sides)],
            ["the API's six PNGs, p95", *(x["pictures_ms"]["p95"] for x in sides)]]
    rows += [[f"p50 {s}", *(x["stages_ms_p50"].get(s) for x in sides)] for s in stages]
    how = ("The networks' outputs are recorded once and replayed, so only the work around them is "
           "timed. The pictures are timed in passes of their own.")
    if not before:
        return ["## The work around the networks", "",
                f"`benchmarks/postprocess.py`: {pp['images']} fold-5 images, the working tree, "
                f"{pp['rounds']} rounds. {how}", "",
                *_table(["ms per image", "working tree"], rows)]
    return ["## The work around the networks: before and after", "",
            f"`benchmarks/postprocess.py`: {pp['images']} fold-5 images, the busdx source at "
            f"{before['revision']}"
            + (f" ({BEFORE_WAS[before['revision']]})" if before["revision"] in BEFORE_WAS else "")
            + " against the working tree, each side in its own process, "
            f"alternately, {pp['rounds']} times. {how} Network inputs are the same on both "
            "sides.", "",
            *_table(["ms per image", f"before ({before['revision']})", "after"], rows)]


def render(results: dict[str, dict]) -> str:
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/write_benchmarks.py` from `benchmarks/results/*.json`; run "
             "`make benchmark` (or `python benchmarks/run.py --data DATA`) to measure again. "
             "Every number below comes from those files.", ""]
    if not results:
        return "\n".join(lines + ["No results yet.", ""])
    lines += summary(results)
    lines += conditions(results)
    if "latency" in results:
        lines += latency_section(results["latency"])
        lines += flops_section(results["latency"])
    if "latency_int8" in results:
        lines += latency_section(results["latency_int8"],
                                 "Latency with the kept int8 models")
        lines += ["Here torch eager runs the fp32 checkpoints, so the output differences above "
                  "are the quantisation's, and the ratio includes its gain.", ""]
    if "tune_ort" in results:
        lines += tuning_section(results["tune_ort"])
    if "throughput" in results:
        lines += throughput_section(results["throughput"])
    if "ray_scaling" in results:
        lines += ray_section(results["ray_scaling"])
    if "load_test" in results:
        lines += load_section(results["load_test"])
    if "quantization" in results:
        lines += quant_section(results["quantization"])
    if "decode" in results:
        lines += decode_section(results["decode"])
    if "postprocess" in results:
        lines += postprocess_section(results["postprocess"])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    text = render(load_results(Path(args.results)))
    Path(args.out).write_text(text, encoding="utf-8")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
