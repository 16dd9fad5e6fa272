"""``busdx predict`` on Ray against the plain run: images per second with 1 and 2 workers, and
what Ray costs per image, timed from the outside over the fold-5 images.

Each command runs as a user would run it, in a fresh process (start-up, model loading, a local
Ray instance started for the run and stopped after it). Reported per run: wall time, images per
second over the wall time and over the time after the first row was written (start-up left
out, read from the CSV's modification times as the rows arrive), and the overhead per image
against the plain run with one thread, as each worker has: (Ray's steady-state time per image x
workers) - the plain run's.

    python benchmarks/ray_scaling.py --data ../shared/data/busbra
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import (
    add_common_args,
    fold_images,
    machine,
    models_info,
    setup_logging,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.ray_scaling")


def _rows_written(path: Path) -> int:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return max(0, sum(1 for _ in csv.reader(fh)) - 1)
    except OSError:
        return 0


def timed_run(images: list[Path], extra: list[str], models: str | None, timeout: int) -> dict:
    """Wall time of one ``busdx predict``, and when its first and last rows appeared."""
    with tempfile.TemporaryDirectory(prefix="busdx-ray-") as tmp:
        out_csv = Path(tmp) / "predictions.csv"
        command = [sys.executable, "-m", "busdx", "predict", *map(str, images),
                   "--csv", str(out_csv), *extra]
        if models:
            command += ["--models", models]
        first_row: list[float] = []
        done = threading.Event()

        def watch(start: float) -> None:
            while not done.is_set():
                if not first_row and _rows_written(out_csv) > 0:
                    first_row.append(time.perf_counter() - start)
                time.sleep(0.02)

        start = time.perf_counter()
        watcher = threading.Thread(target=watch, args=(start,), daemon=True)
        watcher.start()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        done.set()
        watcher.join()
        if proc.returncode != 0:
            raise SystemExit(f"busdx predict {' '.join(extra)} failed: {proc.stderr[-2000:]}")
        with out_csv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    ok = sum(1 for r in rows if not r["error"])
    first = first_row[0] if first_row else wall
    steady = max(wall - first, 1e-9)
    return {"options": " ".join(extra) or "(plain)", "images": len(rows), "analysed": ok,
            "wall_s": round(wall, 2), "first_row_s": round(first, 2),
            "images_per_s_wall": round(ok / wall, 2),
            # rows 2..n arrive in (wall - first); the first row's own analysis is in `first`
            "images_per_s_steady": round((ok - 1) / steady, 2) if ok > 1 else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    images = [i.path for i in fold_images(args.data, limit=args.limit)]
    models = str(args.models) if args.models else None
    # one ONNX Runtime thread per analysis, as each Ray worker runs it: the overhead compares
    # like with like; the plain run as users start it (threads up to the cores) is kept too
    plain = timed_run(images, ["--threads", "1"], models, args.timeout)
    log.info("plain, 1 thread: %s", plain)
    runs = [timed_run(images, [], models, args.timeout), plain]
    for workers in (1, 2):
        result = timed_run(images, ["--ray", "--ray-workers", str(workers)], models,
                           args.timeout)
        result["workers"] = workers
        if plain["images_per_s_steady"] and result["images_per_s_steady"]:
            per_plain = 1000.0 / plain["images_per_s_steady"]
            per_worker = 1000.0 * workers / result["images_per_s_steady"]
            result["overhead_ms_per_image"] = round(per_worker - per_plain, 1)
            result["speedup_steady"] = round(result["images_per_s_steady"]
                                             / plain["images_per_s_steady"], 2)
        log.info("%d worker(s): %s", workers, result)
        runs.append(result)
    return {
        "benchmark": "ray_scaling",
        "machine": machine(),
        "versions": versions(),
        "models": models_info(args.models),
        "images": len(images),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="only N fold-5 images")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    args = parser.parse_args(argv)
    write_result(args.out, "ray_scaling", run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
