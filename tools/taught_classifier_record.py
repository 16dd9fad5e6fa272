"""The record of a rule for one classifier taught by the bundled pair (docs/selection_rules.md:
"A classifier taught by the bundled pair", and "The bundled Lite1 classifier fine-tuned by the
pair"): how the taught network was trained, what the calibration's option rule chose for it
within three passes and measured on validation, the rule's first condition, and, as a study,
each option's validation AUC beside the same option for the bundled Lite1 network (trained
without a teacher).

    python tools/taught_classifier_record.py --run runs/distill/lite1_both_kd \
        --staged runs/distill/release_c1 --all-options runs/distill/release_all
    python tools/taught_classifier_record.py --run runs/distill/lite1_both_ft \
        --staged runs/distill/ft_c1 --all-options runs/distill/ft_all \
        --rule "The bundled Lite1 classifier fine-tuned by the pair" \
        --out reports/studies/finetuned_classifier.json

writes reports/studies/taught_classifier.json (or --out). Nothing here reads a test set: every AUC is end to
end (the bundled segmenter's masks) on BUS-BRA's validation patients, the selection data.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

# the time-budget rule's first condition, which this rule keeps unchanged
from time_budget_record import FLOOR_BELOW_BUNDLED

from busdx.evaluation.evidence import load_record

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "studies" / "taught_classifier.json"
UNTAUGHT = ROOT / "reports" / "studies" / "classifier_time_budget.json"
OPTION = re.compile(r"model=[^,]+, tta=(?P<tta>[a-z_]+), contexts=(?P<contexts>[0-9.,]+)")

log = logging.getLogger("taught_classifier")


def _results(evidence: Path, name: str) -> dict:
    record = load_record(name, evidence)
    if record is None:
        raise SystemExit(f"{evidence / name}.json: no such evidence record")
    return record.results


def _by_option(aucs: dict[str, float], model: str | None = None) -> dict[str, float]:
    """{mirror option: AUC} of one model's options (all of them when ``model`` is None)."""
    out = {}
    for key, auc in aucs.items():
        m = OPTION.fullmatch(key)
        if m and (model is None or key.startswith(f"model={model},")):
            out[m["tta"]] = auc
    return out


def _data_free(command: str) -> str:
    return re.sub(r"--data \S+", "--data DATA", command)


TAUGHT_RULE = "A classifier taught by the bundled pair"


def record(run: Path, staged: Path, all_options: Path, bundled_evidence: Path,
           rule: str = TAUGHT_RULE) -> dict:
    training = json.loads((run / "training.json").read_text())
    candidate = _results(staged / "evidence", "classifier.calibration")
    bundled_auc = _results(bundled_evidence, "classifier.calibration")["val_auc"]
    floor = bundled_auc - FLOOR_BELOW_BUNDLED
    release = json.loads((staged / "release.json").read_text())
    untaught = json.loads(UNTAUGHT.read_text())["candidate"]["options_validation_auc"]
    history = training["history"]
    return {
        "rule": f"docs/selection_rules.md: {rule}",
        "run": {
            "command": _data_free(training["command"]),
            "teacher": training.get("teacher"),
            "teacher_weight": training["config"]["teacher_weight"],
            **({"init": training["config"]["init"]} if training["config"].get("init") else {}),
            "epochs_run": training["epochs_run"],
            "best_epoch": training["best_epoch"],
            "best_validation_auc_ground_truth_crops": max(r["val_auc"] for r in history),
            "wall_minutes": training["wall_minutes"],
            "hardware": training["hardware"],
        },
        "candidate": {
            "made_of": release["classifier"].get("made_of"),
            "command": _data_free(candidate["command"]),
            "validation_auc": candidate["val_auc"],
        },
        "bundled_validation_auc": bundled_auc,
        "condition_1": {"floor": floor, "met": candidate["val_auc"] >= floor},
        # end-to-end validation AUC per mirror option: the taught network, and the bundled Lite1
        # network (the same recipe without a teacher)
        "options_validation_auc": {
            "taught": _by_option(_results(all_options / "evidence",
                                          "classifier.crop_comparison_val_auc")),
            "untaught": _by_option(untaught, "lite1_both"),
        },
        "test_sets_scored": False,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the taught network's run folder")
    parser.add_argument("--staged", type=Path, required=True,
                        help="the staging folder calibrated under the rule (--max-passes 3)")
    parser.add_argument("--all-options", type=Path, required=True,
                        help="a staging folder calibrated on the same network without the "
                        "pass limit (the study's every option)")
    parser.add_argument("--evidence", type=Path, default=ROOT / "evidence",
                        help="the bundled release's evidence")
    parser.add_argument("--rule", default=TAUGHT_RULE,
                        help="the rule's heading in docs/selection_rules.md")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = record(args.run, args.staged, args.all_options, args.evidence, args.rule)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    options = result["options_validation_auc"]
    log.info("condition 1 %s (validation AUC %.4f against the floor %.4f); taught %s, untaught "
             "%s; wrote %s", "met" if result["condition_1"]["met"] else "not met",
             result["candidate"]["validation_auc"], result["condition_1"]["floor"],
             options["taught"], options["untaught"], args.out)


if __name__ == "__main__":
    main()
