"""What does the classifier take from the whole image beside the lesion crop, and is the scanner
part of it?

The shipped two-view network sees the lesion crop and, beside it, the whole letterboxed image,
burned-in scanner text included. BUS-BRA's scanners differ in their share of cancers, so a
network could learn the scanner as a prior: that would help on BUS-BRA and mislead at a hospital
with other machines. On every VALIDATION image (patient-wise, fold 5 not read), the crop stays
the image's own (the segmenter's outline, as served) and the whole-image view is swapped for
another validation image's, of another patient:

- from the SAME scanner: what the view adds beyond the crop that is specific to this image;
- from ANOTHER scanner: the same, plus whatever the scanner itself carries.

Per condition: the AUC, how far the calibrated probability moves, how many calls flip at the
frozen threshold. Two effects, as least-squares slopes of the logit change with patient-bootstrap
95% intervals: the donor image's label (the donor's lesion is in its whole image, so a positive
slope is lesion content, not a shortcut), and, for the other-scanner swap, the difference in the
scanners' log-odds of malignancy on the training images (a positive slope beyond the donor's
label is the scanner prior). Descriptive: no model is chosen by it.

    python studies/whole_image_view.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np

log = logging.getLogger("whole_image_view")

SEED = 0
REPS = 2000
CONDITIONS = ("own", "same scanner", "other scanner")


def pick_donors(scanners: list[str], patients: list[str], same: bool, seed: int = SEED
                ) -> list[int | None]:
    """For each image, a random other image of another patient from the same scanner
    (``same``) or from another scanner; None when there is none."""
    rng = np.random.default_rng(seed)
    donors: list[int | None] = []
    for i, (scanner, patient) in enumerate(zip(scanners, patients, strict=True)):
        pool = [j for j, (s, p) in enumerate(zip(scanners, patients, strict=True))
                if j != i and p != patient and (s == scanner) == same]
        donors.append(int(rng.choice(pool)) if pool else None)
    return donors


def _log_odds(k: int, n: int) -> float:
    return math.log((k + 0.5) / (n - k + 0.5))  # +0.5: finite for a scanner of one class


def image_batch(record, models) -> np.ndarray:
    """The classifier's batch for one image, as the product builds it."""
    from busdx.inference.decode import decode
    from busdx.inference.pipeline import classifier_inputs, segment

    image = decode(str(record.image_path)).image
    return classifier_inputs(image, segment(image, models), models.settings)[0]


def swapped_logit(own: np.ndarray, donor: np.ndarray, models) -> float:
    """The served logit of ``own``'s batch with its whole-image view taken from ``donor``'s."""
    from busdx.models.contract import INPUT_NAME

    x = own.copy()
    # view 1 is the whole image; a lesion-less image's batch is whole images only
    x[:, 1] = donor[0, 1]
    z = models.classifier.run(None, {INPUT_NAME: x})[0]
    return float(np.mean(z)) + models.settings.logit_shift


def collect(data: str, models_dir: str | None, threads: int) -> dict:
    from tqdm import tqdm

    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    if models.settings.views != 2:
        raise SystemExit("the models' classifier sees one view: nothing to swap")
    split = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5))
    val = split.val
    batches = [image_batch(r, models) for r in tqdm(val, desc="validation", leave=False)]
    scanners, patients = [r.scanner for r in val], [r.patient for r in val]
    donors = {"own": list(range(len(val))),
              "same scanner": pick_donors(scanners, patients, same=True),
              "other scanner": pick_donors(scanners, patients, same=False)}
    logits = {name: [None if j is None else swapped_logit(batches[i], batches[j], models)
                     for i, j in enumerate(chosen)] for name, chosen in donors.items()}
    train_counts = Counter((r.scanner, r.label) for r in split.train)
    prior = {s: _log_odds(train_counts[(s, 1)], train_counts[(s, 0)] + train_counts[(s, 1)])
             for s in sorted({r.scanner for r in split.train})}
    return {"ids": [r.id for r in val], "labels": [r.label for r in val],
            "patients": patients, "scanners": scanners, "donors": donors, "logits": logits,
            "scanner_log_odds": prior, "temperature": models.settings.temperature,
            "threshold": models.settings.threshold, "model_version": models.version}


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum()) if (x * x).sum() > 0 else math.nan


def _boot_slope(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = SEED
                ) -> list[float]:
    rng = np.random.default_rng(seed)
    units = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in units}
    values = []
    for _ in range(REPS):
        take = np.concatenate([rows[g] for g in rng.choice(units, len(units))])
        values.append(_slope(x[take], y[take]))
    return [float(v) for v in np.nanpercentile(values, [2.5, 97.5])]


def study(rows: dict) -> dict:
    from busdx.evaluation.classification import roc_auc
    from busdx.training.calibration import sigmoid

    y = np.array(rows["labels"])
    patients = np.array(rows["patients"])
    t, threshold = rows["temperature"], rows["threshold"]
    own = np.array(rows["logits"]["own"], dtype=np.float64)
    conditions, effects = {}, {}
    for name in CONDITIONS:
        have = np.array([z is not None for z in rows["logits"][name]])
        z = np.array([np.nan if v is None else v for v in rows["logits"][name]], dtype=np.float64)
        p, p0 = sigmoid(z[have] / t), sigmoid(own[have] / t)
        conditions[name] = {
            "n": int(have.sum()), "auc": roc_auc(y[have], z[have]),
            "mean_abs_probability_change": float(np.mean(np.abs(p - p0))),
            "calls_flipped": int(np.sum((p >= threshold) != (p0 >= threshold))),
        }
        if name == "own":
            continue
        donor = np.array([-1 if d is None else d for d in rows["donors"][name]])
        change = (z - own)[have]
        effects[name] = {
            "mean_logit_change": float(change.mean()),
            "donor_label_slope": _slope(y[donor[have]].astype(float), change),
            "donor_label_slope_ci95": _boot_slope(y[donor[have]].astype(float), change,
                                                  patients[have]),
        }
        if name == "other scanner":
            prior = rows["scanner_log_odds"]
            gap = np.array([prior.get(rows["scanners"][d], np.nan) - prior.get(s, np.nan)
                            for d, s in zip(donor[have], np.array(rows["scanners"])[have],
                                            strict=True)])
            # the donor's label goes with its scanner's share of cancers: take it out first
            residual = change - effects[name]["donor_label_slope"] * (
                y[donor[have]] - y[donor[have]].mean())
            keep = np.isfinite(gap)
            effects[name].update({
                "scanner_prior_slope": _slope(gap[keep], residual[keep]),
                "scanner_prior_slope_ci95": _boot_slope(gap[keep], residual[keep],
                                                        patients[have][keep]),
            })
    return {
        "question": "what does the two-view classifier take from the whole image beside the "
                    "lesion crop, and does the scanner act as a prior?",
        "split": "validation (patient-wise, fold 5 held out)",
        "model_version": rows["model_version"],
        "n": len(y), "malignant": int(y.sum()),
        "scanner_log_odds_train": rows["scanner_log_odds"],
        "conditions": conditions,
        "effects": effects,
        "reading": "slopes are logit change per unit: per malignant donor (0/1), and per unit "
                   "of the donor scanner's minus the own scanner's training log-odds",
    }


def describe(result: dict, args, out: Path) -> None:
    for name, c in result["conditions"].items():
        log.info("%-14s AUC %.4f, mean |probability change| %.3f, calls flipped %d of %d",
                 name, c["auc"], c["mean_abs_probability_change"], c["calls_flipped"], c["n"])
    for name, e in result["effects"].items():
        log.info("%-14s %s", name, json.dumps(e))


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "whole_image_view", lambda a: collect(a.data, a.models, a.threads),
                     study, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
