"""Helpers shared by the benchmark scripts (they run as ``python benchmarks/NAME.py``, which puts
this folder on ``sys.path``): image selection, percentiles, machine facts, JSON results.

Every script writes one JSON file under ``--out`` (default benchmarks/results/); BENCHMARKS.md
is rendered from those files only (benchmarks/write_benchmarks.py), so no number is typed by hand.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
TEST_FOLD = 5

log = logging.getLogger("benchmarks")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@dataclass(frozen=True)
class BenchImage:
    id: str
    path: Path


def fold_images(data: str | Path | None, fold: int = TEST_FOLD, limit: int | None = None,
                seed: int = 0) -> list[BenchImage]:
    """Images of one official fold (the test fold by default: timing, never tuning).

    ``limit`` takes an evenly spread, seeded sample so a short run still covers all scanners and
    image sizes rather than the first few ids.
    """
    from busdx.data.index import load_index, resolve_root

    index = load_index(resolve_root(str(data) if data is not None else None))
    records = [r for r in index.records if r.fold == fold]
    if not records:
        raise SystemExit(f"fold {fold} has no images under {data}")
    if limit is not None and limit < len(records):
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(records), size=limit, replace=False).tolist())
        records = [records[i] for i in picked]
    return [BenchImage(r.id, Path(r.image_path)) for r in records]


def split_records(data: str | Path | None, part: str):
    """``train`` or ``val`` records of the project's patient-wise split (fold 5 held out)."""
    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split

    index = load_index(resolve_root(str(data) if data is not None else None))
    split = make_split(index, SplitConfig(test_fold=TEST_FOLD))
    return list(getattr(split, part))


def percentiles(values_ms: list[float]) -> dict[str, float]:
    """p50 / p95 / mean / min / max of a list of milliseconds, rounded to 0.01 ms."""
    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "mean": round(float(a.mean()), 2),
        "min": round(float(a.min()), 2),
        "max": round(float(a.max()), 2),
    }


def busy_processes() -> list[str]:
    """Other heavy busdx jobs (training, evaluation) that would make timings meaningless."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    mine = {str(os.getpid()), str(os.getppid())}
    busy = []
    for line in out.splitlines()[1:]:
        pid, state, args = (line.strip().split(None, 2) + ["", ""])[:3]
        # a stopped job (kill -STOP while measuring) takes no CPU
        if pid in mine or state.startswith("T"):
            continue
        if "busdx" in args and any(f" {w} " in f" {args} " for w in ("train", "evaluate")):
            busy.append(line.strip()[:160])
    return busy


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and whether anything else was competing for it."""
    from busdx.hardware import cpu_model

    busy = busy_processes()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "other_heavy_jobs": busy,
        "contended": bool(busy),
        "measured_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def versions() -> dict[str, str]:
    out = {}
    for name in ("numpy", "onnxruntime", "torch", "PIL", "fastapi", "uvicorn"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    return out


def write_result(out_dir: str | Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)
    log.info("wrote %s", path)
    return path


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def models_info(models_dir: str | Path | None) -> dict[str, Any]:
    """Which models were measured: folder, version fingerprint, whether they are stand-ins."""
    from busdx.inference.models import Models

    models = Models.load(models_dir)
    return {
        "dir": str(models.directory),
        "version": models.version,
        "stand_in": models.release.name == "stand-in",
        "classifier_input": models.settings.input,
    }


def add_common_args(parser) -> None:
    parser.add_argument("--data", default=None,
                        help="BUS-BRA root (default: $BUSDX_DATA)")
    parser.add_argument("--models", default=None,
                        help="models folder (default: $BUSDX_MODELS, else models/)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON result")


def time_session_run(session, x, reps: int, warmup: int = 3) -> dict[str, float]:
    """Percentiles (ms) of ``session.run`` on the input ``image`` = ``x``, after ``warmup`` runs."""
    for _ in range(warmup):
        session.run(None, {"image": x})
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - start) * 1000.0)
    return percentiles(times)
