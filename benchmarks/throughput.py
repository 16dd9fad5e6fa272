"""Throughput of ``busdx predict`` over the fold-5 images, timed from the outside.

The command runs exactly as a user would run it (a fresh process: start-up, model loading, one
CSV row per image). Images per second are reported over the whole wall time and over the
analysis alone (the sum of the per-image times the CSV records).

    python benchmarks/throughput.py --data ../shared/data/busbra
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    add_common_args,
    fold_images,
    machine,
    models_info,
    percentiles,
    setup_logging,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.throughput")


def run(args: argparse.Namespace) -> dict[str, Any]:
    images = fold_images(args.data, limit=args.limit)
    with tempfile.TemporaryDirectory(prefix="busdx-throughput-") as tmp:
        out_csv = Path(tmp) / "predictions.csv"
        command = [sys.executable, "-m", "busdx.cli.main", "predict",
                   *[str(i.path) for i in images], "--csv", str(out_csv)]
        if args.models:
            command += ["--models", str(args.models)]
        log.info("busdx predict over %d fold-5 images", len(images))
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"busdx predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with out_csv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    ok = [r for r in rows if not r["error"]]
    per_image = [float(r["time_ms"]) for r in ok if r["time_ms"]]
    analysis_s = sum(per_image) / 1000.0
    return {
        "benchmark": "throughput",
        "machine": machine(),
        "versions": versions(),
        "models": models_info(args.models),
        "command": "busdx predict <fold-5 images> --csv OUT.csv"
        + (f" --models {args.models}" if args.models else ""),
        "images": len(images),
        "analysed": len(ok),
        "errors": len(rows) - len(ok),
        "wall_s": round(wall, 2),
        "images_per_s_wall": round(len(ok) / wall, 2),
        "images_per_s_analysis": round(len(ok) / analysis_s, 2) if analysis_s else None,
        "startup_and_io_s": round(wall - analysis_s, 2),
        "per_image_ms": percentiles(per_image),
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="only N fold-5 images")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before giving up")
    args = parser.parse_args(argv)
    result = run(args)
    write_result(args.out, "throughput", result)
    log.info("%.1f images/s (wall), %.1f images/s (analysis only)", result["images_per_s_wall"],
             result["images_per_s_analysis"] or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
