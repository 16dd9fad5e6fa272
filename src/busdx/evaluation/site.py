"""Recalibration on a hospital's own labelled images (``busdx evaluate external --recalibrate``).

The bundled probability and threshold were fitted on BUS-BRA validation images. Another
scanner's gain, depth and processing shift the networks' logits, so at another hospital the
probabilities can be off and the frozen threshold can miss more cancers than it did here (see
reports/studies/robustness.json). The ranking usually travels better than the calibration, so
the networks are kept and only the two numbers that turn a logit into a call are refitted on the
site's images: Platt scaling sigmoid(a z + b) and the most specific threshold keeping the
card's target sensitivity.

Refitting on the same images that then score it would flatter it, so the operating point's
sensitivity and specificity are also estimated out of fold: the images are cut by patient into
folds (stratified by pathology), each fold is called by the fit on the others, and the pooled
counts get Wilson intervals. That estimate, not the in-sample fit, is what a site should expect.

The recalibrated models are a copy of the models folder with the card changed (temperature,
``logit_shift``, threshold, ``site_calibration`` and a ``version`` that names the refit); the
networks are untouched, so serving needs nothing new.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from busdx.data.splits import patient_folds
from busdx.errors import BusdxError
from busdx.evaluation.classification import (
    Prediction,
    binary_metrics,
    roc_auc,
    wilson_interval,
)
from busdx.training.calibration import (
    expected_calibration_error,
    fit_platt,
    sensitivity_threshold,
    sigmoid,
)

log = logging.getLogger(__name__)

# Below this many images of either class a threshold at 90% sensitivity moves by whole cancers
# from one image to the next: refuse rather than ship a number that noisy.
MIN_PER_CLASS = 20
# Under this many cancers the out-of-fold sensitivity's interval is wider than +-0.1: warn.
FEW_CANCERS = 50


class SiteCalibrationError(BusdxError, ValueError):
    """The site's images cannot support a recalibration."""


@dataclass(frozen=True)
class OperatingPoint:
    """Calls at one operating point on the site's images, with Wilson 95% intervals."""

    tp: int
    fn: int
    tn: int
    fp: int
    ece: float

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sensitivity": self.sensitivity,
                "sensitivity_ci": list(wilson_interval(self.tp, self.tp + self.fn)),
                "specificity": self.specificity,
                "specificity_ci": list(wilson_interval(self.tn, self.tn + self.fp))}


def _point(probs: np.ndarray, labels: np.ndarray, called: np.ndarray) -> OperatingPoint:
    m = binary_metrics(labels, called)
    return OperatingPoint(tp=m.tp, fn=m.fn, tn=m.tn, fp=m.fp,
                          ece=expected_calibration_error(probs, labels))


@dataclass(frozen=True)
class SiteCalibration:
    platt_a: float
    platt_b: float
    temperature: float  # 1 / a, the card's new temperature
    logit_shift: float  # the card's new shift: sigmoid((z + shift) / T) with z the graph's logit
    threshold: float
    target_sensitivity: float
    n: int
    cancers: int
    benign: int
    auc: float
    folds: int
    shipped: OperatingPoint  # the card's frozen operating point on these images
    in_sample: OperatingPoint  # the refit scored on the images it was fitted on (optimistic)
    out_of_fold: OperatingPoint  # each patient fold called by the fit on the others
    # per image, in the order given: the probability from the fit on the other folds
    out_of_fold_probabilities: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()
               if k not in ("shipped", "in_sample", "out_of_fold", "out_of_fold_probabilities")}
        out.update(shipped=self.shipped.to_dict(), in_sample=self.in_sample.to_dict(),
                   out_of_fold=self.out_of_fold.to_dict())
        return out


def _refit(z: np.ndarray, y: np.ndarray, target: float) -> tuple[float, float, float]:
    a, b = fit_platt(z, y)
    if not a > 0:
        raise SiteCalibrationError(
            "the models do not rank these images (Platt slope not positive): recalibration "
            "cannot help; do not use the models on this site's images")
    return a, b, sensitivity_threshold(sigmoid(a * z + b), y, target)


def fit_site_calibration(
    predictions: Sequence[Prediction],
    *,
    temperature: float,
    logit_shift: float,
    threshold: float,
    target_sensitivity: float = 0.90,
    folds: int = 5,
    seed: int = 0,
) -> SiteCalibration:
    """Platt scaling and threshold refitted on ``predictions`` (their ``logit`` is the served
    logit, shift included), with the shipped and out-of-fold operating points.

    ``temperature``, ``logit_shift`` and ``threshold``: the models' current values."""
    y = np.array([p.label for p in predictions], dtype=int)
    cancers, benign = int(y.sum()), int(len(y) - y.sum())
    if min(cancers, benign) < MIN_PER_CLASS:
        raise SiteCalibrationError(
            f"{cancers} malignant and {benign} benign images analysed: recalibration needs at "
            f"least {MIN_PER_CLASS} of each")
    if min(cancers, benign) < folds:
        raise SiteCalibrationError(f"fewer images of a class than the {folds} folds")
    z = np.array([p.logit for p in predictions], dtype=np.float64)
    a, b, new_threshold = _refit(z, y, target_sensitivity)
    probs = sigmoid(a * z + b)
    shipped_probs = sigmoid(z / temperature)

    fold_of = patient_folds(predictions, folds, seed)
    fold = np.array([fold_of[p.patient] for p in predictions])
    oof_probs, oof_called = np.zeros(len(y)), np.zeros(len(y), dtype=bool)
    for k in range(1, folds + 1):
        held = fold == k
        if not held.any():
            continue
        if len(set(y[~held])) < 2:
            raise SiteCalibrationError("a fold's complement lacks one class: too few patients")
        ak, bk, tk = _refit(z[~held], y[~held], target_sensitivity)
        oof_probs[held] = sigmoid(ak * z[held] + bk)
        oof_called[held] = oof_probs[held] >= tk
    if cancers < FEW_CANCERS:
        log.warning("only %d malignant images: the site threshold is uncertain (see the "
                    "out-of-fold sensitivity's interval)", cancers)
    return SiteCalibration(
        platt_a=a, platt_b=b, temperature=1.0 / a,
        # sigmoid(a (z_graph + s) + b) = sigmoid((z_graph + s + b / a) / (1 / a))
        logit_shift=logit_shift + b / a,
        threshold=new_threshold, target_sensitivity=target_sensitivity,
        n=len(y), cancers=cancers, benign=benign, auc=roc_auc(y, z), folds=folds,
        shipped=_point(shipped_probs, y, shipped_probs >= threshold),
        in_sample=_point(probs, y, probs >= new_threshold),
        out_of_fold=_point(oof_probs, y, oof_called),
        out_of_fold_probabilities=tuple(float(p) for p in oof_probs),
    )


def check_target(out: Path, source: Path | None = None) -> None:
    """Refuse a target for the recalibrated models that holds anything, or is the source: a copy
    never overwrites models or other files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SiteCalibrationError(f"{out} exists and is not an empty folder: choose a new one")
    if source is not None and out.resolve() == source.resolve():
        raise SiteCalibrationError("write the recalibrated models to another folder")


def write_site_models(
    source: Path, out: Path, calibration: SiteCalibration, record: dict[str, Any]
) -> Path:
    """Copy the release in ``source`` (its graphs and release.json) to ``out`` with the
    classifier recalibrated, and record the fit as evidence beside it; returns the release file.

    ``record``: what to keep beside the fit (data, command, the models' version...)."""
    from dataclasses import replace

    from busdx.evaluation.evidence import load_record, write_record
    from busdx.release import load_release, release_version, write_release

    check_target(out, source)
    release = load_release(source)
    out.mkdir(parents=True, exist_ok=True)
    for graph in release.graphs:
        shutil.copy2(source / graph.file, out / graph.file)
    c = release.classifier
    earlier = load_record("classifier.site_calibration", source / "evidence")
    earlier_fit = earlier.results if earlier is not None else None
    # the BUS-BRA operating point stays on record through repeated recalibrations; the values
    # just replaced are kept apart when they were themselves a site's
    fit = {**calibration.to_dict(), **record,
           "bundled": (earlier_fit or {}).get("bundled") or {
               "temperature": c.temperature, "logit_shift": c.logit_shift,
               "threshold": c.threshold}}
    if earlier_fit:
        fit["replaced"] = {k: v for k, v in earlier_fit.items() if k != "replaced"}
    # the lesion threshold was fitted under the bundled calibration and does not hold under the
    # refitted one: a site copy offers no lesion reading
    if c.lesion_threshold is not None:
        fit["lesion_reading_dropped"] = True
    site = replace(release, name="site recalibration", classifier=replace(
        c, temperature=calibration.temperature, logit_shift=calibration.logit_shift,
        threshold=calibration.threshold, lesion_threshold=None, agreement=None))
    site = replace(site, version=release_version(site))
    path = write_release(site, out)
    write_record(out / "evidence", "classifier.site_calibration", fit, kind="calibration",
                 release=site, command=str(record.get("command", "")))
    (out / "MODEL_CARD.md").unlink(missing_ok=True)
    from busdx.evaluation.card import write_model_card

    write_model_card(out, evidence=out / "evidence")
    return path
