"""ONNX Runtime settings for serving on a small CPU: which session options, batch sizes and
thread counts make the two models fastest, alone and with two analyses running at once (the
API's default concurrency).

Inputs are random tensors: a network's run time does not depend on pixel values, and no image of
the test fold is needed to choose settings.

    python benchmarks/tune_ort.py
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    add_common_args,
    machine,
    percentiles,
    setup_logging,
    time_session_run,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.tune_ort")

LEVELS = ("basic", "extended", "all")


def make_session(path: Path, threads: int, level: str = "all", spinning: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Spinning threads burn a core waiting for work: faster alone, costly when runs overlap.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input(session, batch: int) -> np.ndarray:
    shape = session.get_inputs()[0].shape
    size = shape[-1] if isinstance(shape[-1], int) else 224
    views = shape[1] if isinstance(shape[1], int) else 1  # a two-view classifier takes 2
    return np.random.default_rng(0).random((batch, views, size, size), dtype=np.float32)


def time_session(session, batch: int, reps: int) -> dict[str, float]:
    x = _input(session, batch)
    stats = time_session_run(session, x, reps, warmup=2)
    stats["per_image_p50"] = round(stats["p50"] / batch, 2)
    return stats


def options_sweep(paths: dict[str, Path], reps: int) -> list[dict[str, Any]]:
    rows = []
    for threads in (1, 2):
        for level in LEVELS:
            for spinning in (True, False):
                if level != "all" and not spinning:
                    continue  # spinning is independent of the graph level: test it once
                row = {"threads": threads, "level": level, "spinning": spinning}
                for part, path in paths.items():
                    row[part] = time_session(make_session(path, threads, level, spinning), 1,
                                             reps)["p50"]
                row["both_p50_ms"] = round(row["segmenter"] + row["classifier"], 2)
                rows.append(row)
                log.info("options %s", row)
    return rows


def batch_sweep(paths: dict[str, Path], threads: int, reps: int,
                batches=(1, 2, 4, 8)) -> list[dict[str, Any]]:
    rows = []
    for part, path in paths.items():
        session = make_session(path, threads)
        for batch in batches:
            stats = time_session(session, batch, max(3, reps // batch))
            rows.append({"model": part, "batch": batch, "per_image_ms": stats["per_image_p50"]})
            log.info("batch %s %d: %.1f ms/image", part, batch, stats["per_image_p50"])
    return rows


def concurrent_throughput(paths: dict[str, Path], threads: int, spinning: bool,
                          workers: int, per_worker: int) -> dict[str, Any]:
    """Images/s when ``workers`` threads each run segmenter + classifier on shared sessions, as
    the API does with its capacity limiter of two."""
    seg = make_session(paths["segmenter"], threads, spinning=spinning)
    cls = make_session(paths["classifier"], threads, spinning=spinning)
    x_seg, x_cls = _input(seg, 1), _input(cls, 1)
    seg.run(None, {"image": x_seg})
    cls.run(None, {"image": x_cls})
    latencies: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_worker):
            start = time.perf_counter()
            seg.run(None, {"image": x_seg})
            cls.run(None, {"image": x_cls})
            with lock:
                latencies.append((time.perf_counter() - start) * 1000.0)

    start = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(workers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    return {"threads": threads, "spinning": spinning, "workers": workers,
            "images_per_s": round(len(latencies) / wall, 2), "latency_ms": percentiles(latencies)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from busdx.inference.models import Models, default_models_dir
    from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

    directory = Path(args.models) if args.models else default_models_dir()
    models = Models.load(directory)
    paths = {"segmenter": directory / SEGMENTER_FILE, "classifier": directory / CLASSIFIER_FILE}
    served = models.segmenter.get_session_options()
    options = options_sweep(paths, args.reps)
    best = min(options, key=lambda r: r["both_p50_ms"])
    batches = batch_sweep(paths, best["threads"], args.reps)
    concurrency = [
        concurrent_throughput(paths, threads, spinning, workers, args.per_worker)
        for workers in (1, 2)
        for threads, spinning in ((1, True), (2, True), (2, False), (1, False))
    ]
    for row in concurrency:
        log.info("concurrency %s", row)
    return {
        "benchmark": "tune_ort",
        "machine": machine(),
        "versions": versions(),
        "models": {"dir": str(directory), "version": models.version},
        "served_settings": {"threads": served.intra_op_num_threads,
                            "level": str(served.graph_optimization_level)},
        "options": options,
        "best_options": best,
        "batches": batches,
        "concurrency": concurrency,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--per-worker", type=int, default=20)
    args = parser.parse_args(argv)
    write_result(args.out, "tune_ort", run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
