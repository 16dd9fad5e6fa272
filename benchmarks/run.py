"""All benchmarks, one after the other (never two at once: they would time each other), then
BENCHMARKS.md from their JSON results. ``make benchmark`` runs this.

    python benchmarks/run.py --data ../shared/data/busbra [--models DIR] [--only latency ...]
    python benchmarks/run.py --data tests/fixtures/busbra --quick --out /tmp/b --md /tmp/B.md

Each step is its own process, so one step's threads, caches and memory do not leak into the
next one's measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REPO, RESULTS_DIR, busy_processes, setup_logging

log = logging.getLogger("benchmarks.run")

HERE = Path(__file__).resolve().parent
STEPS = ("tune_ort", "latency", "throughput", "ray_scaling", "load_test", "quantize", "decode",
         "postprocess")

FULL = {
    "tune_ort": [],
    "latency": ["-n", "100"],
    "throughput": [],
    "ray_scaling": [],
    "load_test": ["--requests", "1000", "--clients", "16"],
    "quantize": [],
    "decode": [],
    "postprocess": [],
}
QUICK = {  # smoke runs: every code path, tiny counts, no meaningful timings
    "tune_ort": ["--reps", "2", "--per-worker", "2"],
    "latency": ["-n", "2", "--warmup", "1", "--reps", "2", "--n-overlays", "1"],
    "throughput": ["--limit", "2"],
    "ray_scaling": ["--limit", "4"],
    "load_test": ["--requests", "24", "--clients", "4", "--images", "2", "--warmup", "4",
                  "--settle", "0.5", "--slow-clients", "2", "--upload-timeout", "1"],
    "quantize": ["--calibration", "2", "--limit", "4", "--reps", "2"],
    "decode": ["--frames", "8", "--reps", "2"],
    "postprocess": ["-n", "2", "--rounds", "1", "--warmup", "0", "--before", "HEAD"],
}
DATA_FREE = {"tune_ort", "decode"}  # steps that take no --data


def step_command(step: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    command = [sys.executable, str(HERE / f"{step}.py"), "--out", args.out, *extra]
    if step not in DATA_FREE and args.data:
        command += ["--data", args.data]
    if args.models:
        command += ["--models", args.models]
    return command


def run_step(command: list[str], timeout: int) -> float | None:
    """The step's duration in seconds; None when it failed (the reason is logged): the other
    steps still run and BENCHMARKS.md is still written from every result there is."""
    name = " ".join(Path(c).name if c.endswith(".py") else c for c in command[1:])
    log.info("running %s", name)
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log.error("%s failed (%s); its earlier result, if any, stays", name, err)
        return None
    return round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="BUS-BRA root (default: $BUSDX_DATA)")
    parser.add_argument("--models", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON results")
    parser.add_argument("--md", default=str(REPO / "BENCHMARKS.md"), help="the report to write")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run of every step")
    parser.add_argument("--quant-work", default=None,
                        help="folder for the int8 models (default runs/quant)")
    parser.add_argument("--step-timeout", type=int, default=1200)
    args = parser.parse_args(argv)
    busy = busy_processes()
    if busy and not args.quick:
        log.warning("other heavy jobs are running; timings will be pessimistic:\n  %s",
                    "\n  ".join(busy))
    counts = QUICK if args.quick else FULL
    steps = args.only or list(STEPS)
    durations = {}
    for step in steps:
        extra = list(counts[step])
        if step == "quantize" and args.quant_work:
            extra += ["--work", args.quant_work]
        durations[step] = run_step(step_command(step, args, extra), args.step_timeout)
    # When an int8 mix was kept, time the full analysis with it as well.
    quant = Path(args.out) / "quantization.json"
    if "quantize" in steps and quant.is_file():
        kept = json.loads(quant.read_text()).get("kept_models_dir")
        (Path(args.out) / "latency_int8.json").unlink(missing_ok=True)  # never a stale one
        if kept:
            command = step_command("latency", argparse.Namespace(**{**vars(args), "models": kept}),
                                   counts["latency"] + ["--name", "latency_int8"])
            durations["latency_int8"] = run_step(command, args.step_timeout)
    log.info("step durations (s): %s", durations)
    subprocess.run([sys.executable, str(HERE / "write_benchmarks.py"), "--results", args.out,
                    "--out", args.md], check=True)
    failed = [step for step, seconds in durations.items() if seconds is None]
    if failed:
        log.error("failed: %s (see above)", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
