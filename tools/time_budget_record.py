"""The record of the rule "The classifier within the time budget" (docs/selection_rules.md):
what the staged candidate's calibration chose and measured on validation, its first condition
against the bundled classifier, and the latency of both releases, timed together in each of
several sittings (this machine's timings move between sittings).

    python tools/time_budget_record.py --staged runs/release \
        --latency CANDIDATE.json BUNDLED.json [--latency CANDIDATE.json BUNDLED.json ...]

writes reports/studies/classifier_time_budget.json. Nothing here reads a test set.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "studies" / "classifier_time_budget.json"
FLOOR_BELOW_BUNDLED = 0.005  # the rule's first condition: the allowance
BUDGET_MS = 60.0

log = logging.getLogger("time_budget")


def _results(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())["results"]


def _latency(path: Path) -> dict:
    record = json.loads(path.read_text())
    served = record["analysis_served_onnxruntime"]
    return {"version": record["models"]["version"], "p50_ms": served["total_ms"]["p50"],
            "p95_ms": served["total_ms"]["p95"], "stages_p50_ms": served["stages_ms_p50"],
            "measured_at_utc": record["machine"]["measured_at_utc"]}


def record(staged: Path, bundled_evidence: Path, sittings: list[tuple[Path, Path]]) -> dict:
    candidate = _results(staged / "evidence", "classifier.calibration")
    bundled = _results(bundled_evidence, "classifier.calibration")
    floor = bundled["val_auc"] - FLOOR_BELOW_BUNDLED
    release = json.loads((staged / "release.json").read_text())
    timed = [{"candidate": _latency(c), "bundled": _latency(b)} for c, b in sittings]
    candidate_p50 = [t["candidate"]["p50_ms"] for t in timed]
    return {
        "rule": "docs/selection_rules.md: The classifier within the time budget",
        "candidate": {
            "made_of": release["classifier"].get("made_of"),
            "command": re.sub(r"--data \S+", "--data DATA", candidate["command"]),
            "validation_auc": candidate["val_auc"],
            "options_validation_auc": _results(staged / "evidence",
                                               "classifier.crop_comparison_val_auc"),
        },
        "bundled_validation_auc": bundled["val_auc"],
        "condition_1": {"floor": floor, "met": candidate["val_auc"] >= floor},
        "latency_sittings": timed,
        "latency_budget_ms": BUDGET_MS,
        "candidate_within_budget_in_every_sitting": max(candidate_p50) <= BUDGET_MS,
        "test_sets_scored": False,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--staged", type=Path, required=True, help="the candidate's staging folder")
    parser.add_argument("--evidence", type=Path, default=ROOT / "evidence",
                        help="the bundled release's evidence")
    parser.add_argument("--latency", type=Path, nargs=2, required=True, action="append",
                        metavar=("CANDIDATE", "BUNDLED"),
                        help="benchmarks/latency.py results of the two, timed in one sitting "
                        "(repeat for each sitting)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = record(args.staged, args.evidence, [tuple(pair) for pair in args.latency])
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    pairs = "; ".join(f"{t['candidate']['p50_ms']:.1f} against {t['bundled']['p50_ms']:.1f}"
                      for t in result["latency_sittings"])
    log.info("condition 1 %s (validation AUC %.4f against the floor %.4f); p50 ms, candidate "
             "against bundled, by sitting: %s; wrote %s",
             "met" if result["condition_1"]["met"] else "not met",
             result["candidate"]["validation_auc"], result["condition_1"]["floor"], pairs, args.out)


if __name__ == "__main__":
    main()
