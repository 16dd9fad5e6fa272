"""End-to-end evaluation of the classifier with ONNX Runtime only (no torch, no scikit-learn):
segment each test image with the exported segmenter (or take the ground-truth mask), crop and
classify exactly as busdx.inference does, calibrate with the card's temperature, call at the
card's frozen threshold, and report metrics with a patient-level bootstrap confidence interval.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from busdx.errors import BusdxError
from busdx.numeric import roc_auc  # noqa: F401  (re-exported: evaluation's callers use it here)

log = logging.getLogger(__name__)

BAND_NAMES = ("3", "4A", "4B", "4C", "5")
BIRADS_LEVELS = (2, 3, 4, 5)


# ---------------------------------------------------------------------------- metrics


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((1 - y).sum(), 1)]
    return fpr, tpr


@dataclass(frozen=True)
class BinaryMetrics:
    accuracy: float
    precision: float
    recall: float  # sensitivity
    specificity: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.recall


def binary_metrics(labels: Sequence[int], predicted: Sequence[int]) -> BinaryMetrics:
    y = np.asarray(labels).astype(int)
    p = np.asarray(predicted).astype(int)
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    tn = int(((p == 0) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return BinaryMetrics(
        accuracy=ratio(tp + tn, len(y)),
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        specificity=ratio(tn, tn + fp),
        tp=tp, fp=fp, tn=tn, fn=fn,
    )


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion: unlike the normal approximation it stays inside
    [0, 1] and keeps its coverage near 0 and 1, where sensitivities on a few dozen cancers sit."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must lie in [0, {n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_cis(
    labels: Sequence[int],
    scores: Sequence[float],
    groups: Sequence[str],
    statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    reps: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile CI of each ``statistic(labels, scores)``, all from the same resamples of
    patients (``groups``) with replacement, so the two views of one patient stay together.
    Resamples with one class only are skipped."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    # each group's members, in index order, as one run of ``by_group``: a resample's indices are
    # the picked groups' runs one after the other, gathered without a Python loop
    by_group = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(uniq))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in statistics}
    for _ in range(reps):
        pick = rng.integers(0, len(uniq), len(uniq))
        picked = sizes[pick]
        ends = np.cumsum(picked)
        offsets = np.repeat(starts[pick] - (ends - picked), picked)
        idx = by_group[offsets + np.arange(ends[-1])]
        if y[idx].min() == y[idx].max():
            continue
        for name, statistic in statistics.items():
            values[name].append(statistic(y[idx], s[idx]))
    out = {}
    for name, v in values.items():
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        out[name] = (float(lo), float(hi))
    return out


def bootstrap_auc(
    labels: Sequence[int],
    scores: Sequence[float],
    groups: Sequence[str],
    reps: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Patient-bootstrap percentile CI of the ROC AUC."""
    return bootstrap_cis(labels, scores, groups, {"auc": roc_auc}, reps, seed, alpha)["auc"]


def rate_statistics(threshold: float) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """Sensitivity and specificity of probabilities at a frozen threshold, as statistics for
    :func:`bootstrap_cis`."""
    return {
        "sensitivity": lambda y, p: binary_metrics(y, p >= threshold).recall,
        "specificity": lambda y, p: binary_metrics(y, p >= threshold).specificity,
    }


def bootstrap_rates(
    labels: Sequence[int],
    probs: Sequence[float],
    groups: Sequence[str],
    threshold: float,
    reps: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap percentile CIs of sensitivity and specificity at a frozen threshold:
    how far a test fold of this size can move them by chance alone."""
    return bootstrap_cis(labels, probs, groups, rate_statistics(threshold), reps, seed, alpha)


def band_index(probs: Sequence[float]) -> np.ndarray:
    """Index (0..4) into busdx.inference.risk.RISK_BANDS of each probability."""
    from busdx.inference.risk import RISK_BANDS, risk_band

    names = [b.name for b in RISK_BANDS]
    return np.array([names.index(risk_band(float(p)).name) for p in probs], dtype=int)


def crosstab(rows: Sequence[int], cols: Sequence[int], n_rows: int, n_cols: int) -> np.ndarray:
    table = np.zeros((n_rows, n_cols), dtype=int)
    for r, c in zip(rows, cols, strict=True):
        table[r, c] += 1
    return table


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (midranks for ties)."""

    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
        out = np.empty(len(v))
        out[order] = np.repeat(first + (counts - 1) / 2.0, counts)
        return out

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom else float("nan")


def weighted_kappa(a: Sequence[int], b: Sequence[int], n: int) -> float:
    """Cohen's kappa with linear weights between two ordinal ratings on 0..n-1."""
    table = crosstab(a, b, n, n).astype(float)
    total = table.sum()
    i, j = np.indices((n, n))
    w = np.abs(i - j) / (n - 1)
    expected = np.outer(table.sum(1), table.sum(0)) / total
    denom = (w * expected).sum()
    return float(1 - (w * table).sum() / denom) if denom else float("nan")


def birads_agreement(bands: Sequence[int], birads: Sequence[int]) -> dict:
    """How the risk band relates to the radiologists' BI-RADS (2, 3, 4, 5).

    The band has 4A/4B/4C where BUS-BRA has one 4, and no 2: the kappa therefore collapses
    the band onto BI-RADS's scale (3 -> 3, 4A/4B/4C -> 4, 5 -> 5; BI-RADS 2 and 3 merged into
    one level), while Spearman uses the full band order.
    """
    bands = np.asarray(bands, dtype=int)
    birads = np.asarray(birads, dtype=int)
    table = crosstab(bands, [BIRADS_LEVELS.index(b) for b in birads], len(BAND_NAMES), 4)
    collapsed_band = np.select([bands == 0, bands == 4], [0, 2], 1)
    collapsed_birads = np.select([birads <= 3, birads == 5], [0, 2], 1)
    return {
        "table": {"rows_band": list(BAND_NAMES), "cols_birads": list(BIRADS_LEVELS),
                  "counts": table.tolist()},
        "spearman": spearman(bands, birads),
        "weighted_kappa_linear_3level": weighted_kappa(collapsed_band, collapsed_birads, 3),
        "exact_agreement_3level": float(np.mean(collapsed_band == collapsed_birads)),
    }


# ---------------------------------------------------------------------------- pipeline


@dataclass
class Prediction:
    id: str
    patient: str
    label: int
    birads: int
    logit: float
    prob: float


# A lesion image in which the product finds no lesion gets no call. End to end it is scored
# as the lowest probability, so that the miss counts against sensitivity and AUC, not as the
# whole image's probability the product shows for reference only.
NOT_FOUND_LOGIT = -30.0


def scored_logit(logit: float, found: bool) -> float:
    """An image's logit as the end-to-end evaluation scores it (see NOT_FOUND_LOGIT)."""
    return float(logit) if found else NOT_FOUND_LOGIT


def record_inputs(
    records: Sequence, models, masks: str = "predicted"
) -> tuple[list[np.ndarray], int]:
    """Each record's classifier batch [K, V, S, S], built by the product's own code
    (busdx.inference.pipeline: segment, then one crop per context of the card); and how many
    predicted masks were empty (those images fall back to the whole image)."""
    out, found = _inputs_and_found(records, models, masks)
    return out, len(found) - sum(found)


def _inputs_and_found(records: Sequence, models, masks: str) -> tuple[list[np.ndarray],
                                                                      list[bool]]:
    from busdx.data.preprocess import load_gray, load_mask
    from busdx.inference.pipeline import classifier_inputs, segment

    if masks not in ("predicted", "gt"):
        raise BusdxError(f"--masks must be 'predicted' or 'gt', not {masks!r}")
    out, found = [], []
    for r in records:
        image = load_gray(r.image_path)
        mask = load_mask(r.mask_path) if masks == "gt" else segment(image, models)
        found.append(bool(mask.any()))
        out.append(classifier_inputs(image, mask, models.settings)[0])
    return out, found


@dataclass
class ClassificationReport:
    n: int
    masks: str
    empty_masks: int
    auc: float
    auc_ci95: tuple[float, float]
    accuracy: float
    precision: float
    recall: float
    sensitivity: float
    specificity: float
    tp: int
    fp: int
    tn: int
    fn: int
    threshold: float
    temperature: float
    ece_uncalibrated: float
    ece_calibrated: float
    birads: dict | None  # agreement of the risk band with BI-RADS, when every image has one
    logit_offset: float = 0.0  # Platt intercept folded into the exported model
    sensitivity_ci95: tuple[float, float] | None = None  # patient bootstrap, frozen threshold
    specificity_ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("auc_ci95", "sensitivity_ci95", "specificity_ci95"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


def evaluate_predictions(
    preds: Sequence[Prediction],
    temperature: float,
    threshold: float,
    masks: str,
    empty_masks: int = 0,
    reps: int = 2000,
    seed: int = 0,
    logit_offset: float = 0.0,
) -> ClassificationReport:
    """Metrics at the frozen operating point. ``logit_offset`` (the Platt intercept folded into
    the exported model) is taken off again for the uncalibrated ECE."""
    from busdx.numeric import sigmoid
    from busdx.training.calibration import calibrate, expected_calibration_error

    y = np.array([p.label for p in preds])
    logits = np.array([p.logit for p in preds])
    probs = calibrate(logits, temperature)
    m = binary_metrics(y, probs >= threshold)
    # one set of patient resamples for the three intervals
    cis = bootstrap_cis(y, probs, [p.patient for p in preds],
                        {"auc": roc_auc, **rate_statistics(threshold)}, reps=reps, seed=seed)
    return ClassificationReport(
        n=len(preds),
        masks=masks,
        empty_masks=empty_masks,
        auc=roc_auc(y, probs),
        auc_ci95=cis["auc"],
        accuracy=m.accuracy, precision=m.precision, recall=m.recall, sensitivity=m.recall,
        specificity=m.specificity, tp=m.tp, fp=m.fp, tn=m.tn, fn=m.fn,
        threshold=threshold, temperature=temperature,
        ece_uncalibrated=expected_calibration_error(sigmoid(logits - logit_offset), y),
        ece_calibrated=expected_calibration_error(probs, y),
        # external sets may come without the radiologists' BI-RADS
        birads=birads_agreement(band_index(probs), [p.birads for p in preds])
        if all(p.birads in BIRADS_LEVELS for p in preds) else None,
        logit_offset=logit_offset,
        sensitivity_ci95=cis["sensitivity"], specificity_ci95=cis["specificity"],
    )


def by_group(preds: Sequence[Prediction], groups: Sequence[str], threshold: float) -> dict:
    """Per group (a scanner, say): the counts, AUC and the rates at the frozen ``threshold``.
    AUC is None for a group with one class only, a rate None without cases to rate."""
    if len(preds) != len(groups):
        raise ValueError(f"{len(preds)} predictions but {len(groups)} groups")
    out = {}
    for name in sorted(set(groups)):
        part = [p for p, g in zip(preds, groups, strict=True) if g == name]
        y = np.array([p.label for p in part])
        called = np.array([p.prob >= threshold for p in part])
        m = binary_metrics(y, called)
        out[name] = {
            "n": len(part), "malignant": int(y.sum()),
            "auc": roc_auc(y, np.array([p.prob for p in part])) if 0 < y.sum() < len(y) else None,
            "sensitivity": m.recall if y.sum() else None,
            "specificity": m.specificity if (y == 0).any() else None,
            "tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn,
        }
    return out


def reader_comparison(preds: Sequence[Prediction], reps: int = 2000, seed: int = 0
                      ) -> dict | None:
    """The radiologists' BI-RADS (2 < 3 < 4 < 5) read as a score beside the model's probability
    on the same images: each AUC and the model's minus the radiologists', with percentile CIs
    from one set of patient resamples (paired). None when an image has no BI-RADS or one class
    is missing.

    BUS-BRA's BI-RADS was given at the examination, with the live scan and the clinical
    context, and every lesion went to biopsy whatever its category: this compares the model
    with that reading on these images, not in a reader study."""
    y = np.array([p.label for p in preds])
    if len(set(y)) < 2 or not all(p.birads in BIRADS_LEVELS for p in preds):
        return None
    scores = np.column_stack([[p.prob for p in preds], [p.birads for p in preds]])
    statistics = {
        "model_auc": lambda y, s: roc_auc(y, s[:, 0]),
        "birads_auc": lambda y, s: roc_auc(y, s[:, 1]),
        "difference": lambda y, s: roc_auc(y, s[:, 0]) - roc_auc(y, s[:, 1]),
    }
    cis = bootstrap_cis(y, scores, [p.patient for p in preds], statistics, reps=reps, seed=seed)
    out: dict = {"n": len(preds)}
    for name, statistic in statistics.items():
        out[name] = statistic(y, scores)
        out[f"{name}_ci95"] = list(cis[name])
    return out


def birads_sections(preds: Sequence[Prediction], threshold: float, reps: int = 2000,
                    seed: int = 0) -> dict:
    """``readers`` (reader_comparison) and ``per_birads`` (the model within each BI-RADS
    category at ``threshold``), or nothing when an image has no BI-RADS."""
    readers = reader_comparison(preds, reps=reps, seed=seed)
    if readers is None:
        return {}
    return {"readers": readers,
            "per_birads": by_group(preds, [f"BI-RADS {p.birads}" for p in preds], threshold)}


def predict_records(
    records: Sequence,
    models_dir: str | Path,
    masks: str = "predicted",
    threads: int = 1,
) -> tuple[list[Prediction], int]:
    """Run the exported models over ``records`` as busdx.inference does; returns predictions and
    the empty-mask count. With predicted masks, an image in which no lesion is found scores
    NOT_FOUND_LOGIT (no call is made)."""
    from busdx.inference.models import Models
    from busdx.training.calibration import calibrate

    models = Models.load(models_dir, threads=threads, with_segmenter=masks != "gt")
    inputs, found = _inputs_and_found(records, models, masks)
    empty = len(found) - sum(found)
    logits = mean_logits(models.classifier, inputs) + models.settings.logit_shift
    if masks == "predicted":
        logits = [scored_logit(z, f) for z, f in zip(logits, found, strict=True)]
    temperature = models.settings.temperature
    preds = [Prediction(r.id, r.patient, r.label, r.birads, float(z), float(calibrate(z, temperature)))
             for r, z in zip(records, logits, strict=True)]
    return preds, empty


def mean_logits(classifier, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Per record, the classifier's logit averaged over its crops."""
    return np.array([float(np.mean(z)) for z in crop_logits(classifier, inputs)])


def crop_logits(classifier, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per record, the classifier's logit of each of its crops. ``classifier``: an ONNX Runtime
    session, or a model file (opened once here)."""
    if isinstance(classifier, (str, Path)):
        from busdx.inference.models import open_session

        classifier = open_session(Path(classifier), 1)
    from busdx.models.contract import INPUT_NAME

    return [np.asarray(classifier.run(None, {INPUT_NAME: x})[0], dtype=np.float64).reshape(-1)
            for x in inputs]


def fit_operating_point(logits: np.ndarray, labels: np.ndarray, target_sensitivity: float = 0.90
                        ) -> dict:
    """Platt scaling and the sensitivity-keeping threshold, fitted on VALIDATION logits.

    Returns the card's values: ``logit_offset`` (b/a, to fold into the exported bias),
    ``temperature`` (1/a), ``threshold`` (on the calibrated probability) and the diagnostics.
    """
    from busdx.training.calibration import (
        expected_calibration_error,
        fit_platt,
        fit_temperature,
        nll,
        sensitivity_threshold,
        sigmoid,
        threshold_rule,
    )

    y = np.asarray(labels).astype(int)
    z = np.asarray(logits, dtype=np.float64)
    a, b = fit_platt(z, y)
    t_only = fit_temperature(z, y)
    method = ("Platt scaling sigmoid(a z + b) on validation; b/a folded into the exported bias, "
              "temperature = 1/a")
    if not a > 0:
        # a model that ranks no better than chance on validation (tiny sets, broken runs):
        # keep the order of its scores and fall back to a temperature
        log.warning("Platt slope %.3g is not positive: falling back to temperature scaling", a)
        a, b = 1.0 / t_only, 0.0
        method = "temperature scaling (Platt's slope was not positive on validation)"
    probs = sigmoid(a * z + b)
    threshold = sensitivity_threshold(probs, y, target_sensitivity)
    called = probs >= threshold
    return {
        "logit_offset": b / a,
        "temperature": 1.0 / a,
        "threshold": threshold,
        "threshold_rule": threshold_rule(target_sensitivity),
        "calibration": {
            "method": method,
            "platt_a": a, "platt_b": b,
            "n_val": len(y),
            "target_sensitivity": target_sensitivity,
            "val_auc": roc_auc(y, z),
            "val_ece_before": expected_calibration_error(sigmoid(z), y),
            "val_ece_temperature_only": expected_calibration_error(sigmoid(z / t_only), y),
            "val_ece_after": expected_calibration_error(probs, y),
            "val_nll_before": nll(z, y),
            "val_nll_after": float(np.mean(-y * np.log(np.clip(probs, 1e-12, 1))
                                           - (1 - y) * np.log(np.clip(1 - probs, 1e-12, 1)))),
            "temperature_only": t_only,
            "val_sensitivity": float(called[y == 1].mean()),
            "val_specificity": float((~called[y == 0]).mean()),
            # counts, so readers see how few cancers the operating point was set on
            "val_cancers_called": int(called[y == 1].sum()), "val_cancers": int((y == 1).sum()),
            "val_benign_cleared": int((~called[y == 0]).sum()), "val_benign": int((y == 0).sum()),
        },
    }


# ---------------------------------------------------------------------------- lesion reading


def lesion_predictions(preds: Sequence[Prediction], lesions: Sequence[str], temperature: float
                       ) -> tuple[list[Prediction], list[Prediction]]:
    """The lesion reading (busdx.inference.lesion) of every image, in two units: per image (each
    image keeps its row and carries its lesion's logit and probability) and per lesion (one row
    per lesion, named and labelled by its first image)."""
    from busdx.inference.lesion import group_means
    from busdx.training.calibration import calibrate

    if len(preds) != len(lesions):
        raise ValueError(f"{len(preds)} predictions but {len(lesions)} lesion labels")
    by_lesion: dict[str, list[int]] = {}
    for i, key in enumerate(lesions):
        by_lesion.setdefault(str(key), []).append(i)
    for key, members in by_lesion.items():
        if len({preds[i].label for i in members}) > 1:
            raise BusdxError(f"the images of lesion {key} disagree on its pathology")
    z = group_means([p.logit for p in preds], lesions)
    probs = calibrate(z, temperature)
    images = [Prediction(p.id, p.patient, p.label, p.birads, float(zi), float(pi))
              for p, zi, pi in zip(preds, z, probs, strict=True)]
    return images, [images[members[0]] for members in by_lesion.values()]


def fit_lesion_reading(preds: Sequence[Prediction], lesions: Sequence[str], temperature: float,
                       target_sensitivity: float = 0.90) -> dict:
    """Rule X's lesion threshold, fitted on VALIDATION predictions (the served logits): the
    per-image rule (:func:`busdx.training.calibration.sensitivity_threshold`) over the images,
    each carrying its lesion's probability. ``offered``: whether the lesion reading ranks the
    validation images at least as well as the per-image reading (rule X's check)."""
    from busdx.training.calibration import expected_calibration_error, sensitivity_threshold

    images, per_lesion = lesion_predictions(preds, lesions, temperature)
    y = np.array([p.label for p in images])
    probs = np.array([p.prob for p in images])
    threshold = sensitivity_threshold(probs, y, target_sensitivity)
    m = binary_metrics(y, probs >= threshold)
    auc_image = roc_auc(y, [p.prob for p in preds])
    auc_lesion = roc_auc(y, probs)
    return {
        "threshold": threshold,
        "offered": bool(auc_lesion >= auc_image),
        "rule": "docs/selection_rules.md, rule X",
        "threshold_rule": (f"most specific threshold with validation sensitivity >= "
                           f"{target_sensitivity} over the validation images, each carrying its "
                           "lesion's probability; midway to the next lower probability"),
        "validation": {
            "n": len(images), "lesions": len(per_lesion),
            "multi_view_lesions": sum(n > 1 for n in Counter(map(str, lesions)).values()),
            "auc_image_reading": auc_image, "auc_lesion_reading": auc_lesion,
            "sensitivity": m.sensitivity, "specificity": m.specificity,
            "tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn,
            "ece": expected_calibration_error(probs, y),
        },
    }


def evaluate_lesion_reading(preds: Sequence[Prediction], lesions: Sequence[str],
                            temperature: float, threshold: float, masks: str,
                            empty_masks: int = 0, reps: int = 2000, seed: int = 0,
                            logit_offset: float = 0.0) -> dict:
    """The lesion reading at its frozen ``threshold``, per image and per lesion (rule X).
    ``empty_masks`` counts images in both units."""
    images, per_lesion = lesion_predictions(preds, lesions, temperature)
    out: dict = {unit: evaluate_predictions(rows, temperature, threshold, masks, empty_masks,
                                            reps, seed, logit_offset).to_dict()
                 for unit, rows in (("image", images), ("lesion", per_lesion))}
    out["multi_view_lesions"] = sum(n > 1 for n in Counter(map(str, lesions)).values())
    return out
