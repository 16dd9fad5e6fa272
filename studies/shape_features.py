"""Do BI-RADS-style shape and echo features of the predicted outline add to the classifier?

The bundled pipeline runs on every image of the official split (test fold 5 held out): the
served mask (segmenter, threshold, largest component, holes filled) and the classifier's logit,
exactly as ``busdx.inference.pipeline.analyze`` computes them. From each mask come scale-free
features, since BUS-BRA gives no pixel size and other hospitals image at other depths:

- shape: circularity, solidity, height/width of the box ("taller than wide"), minor/major axis
  of the moment ellipse, |sin| of the ellipse's angle;
- echo: log ratio of the mean grey level inside the lesion to the tissue beside it at the same
  depth (echogenicity), below it to beside it (posterior enhancement or shadowing), and the
  coefficient of variation inside (heterogeneity).

A logistic regression on the standardised features is fitted on the TRAIN split; a second one
combines its score with the classifier's logit. That combination is judged on VALIDATION by
5-fold patient-grouped cross-validation (out-of-fold AUC against the classifier's logit alone).
The rule, fixed before the numbers were seen: worth building into the product only if the
out-of-fold AUC gains at least 0.005. The test fold is not read.

    python studies/shape_features.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger("shape_features")

FEATURES = ("circularity", "solidity", "height_over_width", "minor_over_major", "abs_sin_angle",
            "log_echo_ratio", "log_posterior_ratio", "heterogeneity")
MIN_GAIN = 0.005


def features(image: np.ndarray, mask: np.ndarray) -> list[float] | None:
    """The scale-free features of one served mask (None without a lesion)."""
    from busdx.inference.measure import measure

    if not mask.any():
        return None
    m = measure(mask)
    mask = mask.astype(bool)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    height, width = y1 - y0, x1 - x0
    grey = image.astype(np.float64) * 255.0
    inside = grey[mask].mean()
    pad = max(3, width // 2)
    beside = np.zeros_like(mask)
    beside[y0:y1, max(0, x0 - pad) : x1 + pad] = True
    beside &= ~mask
    below = np.zeros_like(mask)
    below[y1 : y1 + max(3, height // 2), x0:x1] = True
    side = grey[beside].mean() if beside.any() else inside
    under = grey[below].mean() if below.any() else side
    # +1 grey level keeps the ratios finite on black (letterboxed or anechoic) regions
    return [m.circularity, m.solidity, height / width, m.ellipse_minor / max(m.ellipse_major, 1e-6),
            abs(math.sin(math.radians(m.ellipse_angle_deg))),
            math.log((inside + 1.0) / (side + 1.0)), math.log((under + 1.0) / (side + 1.0)),
            grey[mask].std() / (inside + 1.0)]


def image_row(record, part: str, models) -> dict:
    """One image: its label, the classifier's logit and the shape features of its outline."""
    from busdx.inference.decode import decode
    from busdx.inference.pipeline import classify, segment

    image = decode(str(record.image_path)).image
    mask = segment(image, models)
    return {"part": part, "label": record.label, "patient": record.patient,
            "logit": classify(image, mask, models)[0], "features": features(image, mask)}


def collect(data: str, models_dir: str | None, threads: int) -> dict:
    from tqdm import tqdm

    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    split = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5))
    rows = {}
    for part, records in (("train", split.train), ("val", split.val)):
        for r in tqdm(records, desc=part, leave=False):
            rows[r.id] = image_row(r, part, models)
    return {"model_version": models.version, "images": rows}


def study(collected: dict, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = collected["images"]
    ids = sorted(rows)
    part = np.array([rows[i]["part"] for i in ids])
    y = np.array([rows[i]["label"] for i in ids])
    logit = np.array([rows[i]["logit"] for i in ids])
    groups = np.array([rows[i]["patient"] for i in ids])
    missing = np.array([rows[i]["features"] is None for i in ids])
    x = np.array([rows[i]["features"] or [np.nan] * len(FEATURES) for i in ids], dtype=np.float64)
    train, val = part == "train", part == "val"
    # an image without a lesion gets the training median: the classifier's logit carries it
    x = np.where(np.isnan(x), np.nanmedian(x[train], axis=0), x)
    shape_model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    shape_model.fit(x[train], y[train])
    shape = shape_model.decision_function(x)
    pair = np.c_[logit, shape][val]
    out_of_fold = np.zeros(int(val.sum()))
    for fit, held in GroupKFold(n_splits=5).split(pair, y[val], groups[val]):
        combiner = LogisticRegression(C=1.0, random_state=seed).fit(pair[fit], y[val][fit])
        out_of_fold[held] = combiner.decision_function(pair[held])
    alone = float(roc_auc_score(y[val], logit[val]))
    combined = float(roc_auc_score(y[val], out_of_fold))
    return {
        "question": "do scale-free shape and echo features of the served mask add to the "
                    "classifier's logit?",
        "model_version": collected["model_version"],
        "rule": f"build it in only if the out-of-fold validation AUC gains >= {MIN_GAIN}",
        "n_train": int(train.sum()), "n_val": int(val.sum()),
        "no_lesion": {"train": int(np.sum(missing & train)), "val": int(np.sum(missing & val))},
        "val_auc_each_feature_note": "each raw feature as a score; under 0.5: lower values go "
                                     "with malignancy (solidity, posterior ratio)",
        "val_auc_each_feature": {name: float(roc_auc_score(y[val], x[val, j]))
                                 for j, name in enumerate(FEATURES)},
        "shape_model_auc": {"train": float(roc_auc_score(y[train], shape[train])),
                            "val": float(roc_auc_score(y[val], shape[val]))},
        "val_auc_classifier_alone": alone,
        "val_auc_combined_out_of_fold": combined,
        "gain": combined - alone,
        "worth_building": combined - alone >= MIN_GAIN,
    }


def describe(result: dict, args, out: Path) -> None:
    for name, auc in result["val_auc_each_feature"].items():
        log.info("%-22s validation AUC %.3f", name, auc)
    log.info("shape model AUC: train %.3f, validation %.3f", *result["shape_model_auc"].values())
    log.info("classifier alone %.4f, combined (out of fold) %.4f: gain %+.4f, %s",
             result["val_auc_classifier_alone"], result["val_auc_combined_out_of_fold"],
             result["gain"], "worth building" if result["worth_building"] else "not worth it")


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "shape_features", lambda a: collect(a.data, a.models, a.threads),
                     study, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
