"""Views that cannot be one lesion: the caution rule of a lesion reading, fitted on the
validation lesions and judged once on the test fold.

A reader who drops two images of different patients together gets one lesion call from both,
with nothing said (a benign 0.4% view and a malignant 99.6% view read as "malignant 48%"). The
rule, written down before any number below was looked at:

- Views disagree when the spread of their served logits (largest minus smallest) exceeds the
  widest spread of any validation lesion's two views, or when every view outlined a lesion
  measured in the same units and the longest of their longest diameters exceeds the shortest
  by a larger factor than any validation lesion's two views show. The reading is still given,
  with a caution (busdx.inference.lesion.Agreement; the card's lesion_reading.agreement).
- Validation fixes both limits (no validation lesion is flagged by construction). The test
  fold is read once, after: the share of its lesions whose own two views are flagged (false
  cautions), and the share of pairs of views of two different patients that are flagged (each
  lesion's left view with the next lesion's right view, lesions in patient order).

BUS-BRA's -l and -r images are the two planes of one lesion (halves of a dual-view capture),
so a patient's pair is a lesion's two views.

    python studies/view_agreement.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("view_agreement")


def image_row(record, models, baseline=None) -> dict:
    """What the rule reads of one image as served: its logit and its lesion's size."""
    from _runner import plain_analysis

    from busdx.inference.decode import decode

    image = None if baseline is not None else decode(str(record.image_path)).image
    a = plain_analysis(record, image, models, baseline)
    m = a.measurements
    return {"logit": a.logit, "lesion_found": a.lesion_found,
            "longest_diameter": m.longest_diameter if m else None,
            "units": m.units if m else None}


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    from _runner import lesion_pairs, validation_records
    from tqdm import tqdm

    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    test = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5)).test
    parts = {"validation": lesion_pairs(validation_records(data)), "test": lesion_pairs(test)}
    lesions = {}
    for part, pairs in parts.items():
        rows = []
        for lesion, left, right in tqdm(pairs, desc=f"{part} lesions"):
            # the shared baseline holds validation images only
            shared = baseline if part == "validation" else None
            rows.append({"lesion": lesion, "label": left.label,
                         "views": [image_row(r, models, shared) for r in (left, right)]})
        lesions[part] = rows
    return {"model_version": models.version, "lesions": lesions}


def _scores(views: list[dict]) -> list:
    """A lesion's recorded views as the served reading sees them."""
    from busdx.inference.lesion import ViewScore

    return [ViewScore(v["logit"], 1.0, v["lesion_found"], "", False, v["longest_diameter"],
                      v["units"]) for v in views]


def flagged(views: list[dict], spread: float, ratio: float) -> bool:
    """Whether the served rule (busdx.inference.lesion.Agreement) cautions these views."""
    from busdx.inference.lesion import Agreement

    return bool(Agreement(spread, ratio).disagreement(_scores(views)))


def summarise(collected: dict) -> dict:
    from busdx.inference.lesion import diameter_ratio, logit_spread

    validation, test = collected["lesions"]["validation"], collected["lesions"]["test"]
    spread = max(logit_spread(_scores(x["views"])) for x in validation)
    ratio = max(r for x in validation if (r := diameter_ratio(_scores(x["views"]))) is not None)
    own = [flagged(x["views"], spread, ratio) for x in test]
    # each test lesion's left view beside the next lesion's right view: two patients
    mixed = [[test[i]["views"][0], test[(i + 1) % len(test)]["views"][1]]
             for i in range(len(test))]
    mixed_flags = np.array([flagged(v, spread, ratio) for v in mixed])
    labels = np.array([x["label"] for x in test])
    unlike = labels != np.roll(labels, -1)  # one benign and one malignant lesion
    return {
        "question": "which views given as one lesion cannot be one lesion?",
        "rule": "views disagree when their served logits spread wider, or (all outlined, one "
                "unit) their longest diameters differ by a larger factor, than any "
                "validation lesion's two views",
        "model_version": collected["model_version"],
        "fitted_on": f"validation, {len(validation)} lesions with two views",
        "agreement": {"logit_spread": spread, "diameter_ratio": ratio},
        "test": {
            "lesions": len(test),
            "own_views_flagged": int(sum(own)),
            "own_views_flagged_share": float(np.mean(own)),
            "two_patients_flagged": int(mixed_flags.sum()),
            "two_patients_flagged_share": float(mixed_flags.mean()),
            "two_patients_one_benign_one_malignant": int(unlike.sum()),
            "two_patients_one_benign_one_malignant_flagged_share":
                float(mixed_flags[unlike].mean()) if unlike.any() else None,
        },
    }


def write_to_card(result: dict, card_path: Path) -> None:
    """The fitted limits into the card's lesion reading, which the served models read."""
    from busdx.evaluation.model_card import load_card, update_card

    lesion = load_card(card_path)["classifier"]["lesion_reading"]
    update_card(card_path, "classifier", {"lesion_reading": {
        **lesion, "agreement": {
            **result["agreement"], "evidence": "reports/studies/view_agreement.json",
            "command": "python studies/view_agreement.py --data DATA --out reports/studies"}}})


def describe(result: dict, args, out: Path) -> None:
    from busdx.inference.models import default_models_dir

    t = result["test"]
    log.info("limits (validation): logit spread %.3f, diameter ratio %.3f",
             result["agreement"]["logit_spread"], result["agreement"]["diameter_ratio"])
    log.info("test fold: %d of %d lesions' own views flagged (%.1f%%); %d of %d two-patient "
             "pairs flagged (%.1f%%; %.1f%% of those with one benign and one malignant lesion)",
             t["own_views_flagged"], t["lesions"], 100 * t["own_views_flagged_share"],
             t["two_patients_flagged"], t["lesions"], 100 * t["two_patients_flagged_share"],
             100 * (t["two_patients_one_benign_one_malignant_flagged_share"] or 0.0))
    from busdx.evaluation.model_card import is_bundled

    # only `busdx release` writes models/: a staging release takes the limits, then ships
    target = Path(args.models) if args.models else default_models_dir()
    if not is_bundled(target):
        write_to_card(result, target)


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "view_agreement", lambda a: collect(a.data, a.models, a.threads),
                     summarise, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
