"""Reading one lesion from several images of it (rule X of docs/selection_rules.md).

A lesion is documented in two orthogonal planes, and BI-RADS is assigned to the lesion, not to
one image. Each image is analysed as usual (busdx.inference.pipeline); the lesion's logit is the
mean of their served logits, turned into a probability by the card's temperature exactly as for
one image, so a lesion given as one image reads as that image does. The call uses the card's
lesion threshold (``classifier.lesion_reading``), fitted on validation images that each carried
their lesion's reading: averaging two views makes the scores of one lesion less spread, so the
per-image threshold is not the right one for them.

Views that cannot be one lesion get a caution (``views_disagree``): their served logits spread
wider than ``logit_spread``, or, when every view outlined a lesion measured in the same units,
their longest diameters differ by a larger factor than ``diameter_ratio``. Both come from the
card's ``lesion_reading.agreement``: the widest any validation lesion's two views showed
(studies/view_agreement.py, which also says how the rule did on the test fold).

When no view shows a lesion there is no lesion to call: the reading says "no lesion", as one
image does, and gives no risk band; the probability stays, for reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from busdx import DISCLAIMER, __version__
from busdx.errors import BusdxError
from busdx.inference.pipeline import NO_LESION, WITHHELD
from busdx.inference.risk import RiskBand, risk_band
from busdx.numeric import sigmoid


def compile_pattern(text: str | None) -> re.Pattern | None:
    """``--lesion-pattern``: a regular expression whose first group names the lesion."""
    if text is None:
        return None
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise BusdxError(f"--lesion-pattern is not a regular expression: {err}") from err
    if pattern.groups < 1:
        raise BusdxError("--lesion-pattern needs a group (...) that names the lesion")
    return pattern


def lesion_key(path: PurePath | str, pattern: re.Pattern | None) -> str:
    """The lesion a file shows: the pattern's first group in its path, else the path itself
    (a lesion of one view)."""
    text = PurePath(path).as_posix()
    found = pattern.search(text) if pattern is not None else None
    return found.group(1) if found and found.groups() else text


def group_means(values: Sequence[float], groups: Sequence[str]) -> np.ndarray:
    """Each value replaced by the mean over its group (the views of one lesion)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) != len(groups):
        raise ValueError(f"{len(v)} values but {len(groups)} group labels")
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=v)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


@dataclass(frozen=True)
class Agreement:
    """How far views of one lesion may differ (the card's ``lesion_reading.agreement``)."""

    logit_spread: float  # largest minus smallest served logit
    diameter_ratio: float  # longest over shortest longest diameter, in one unit

    @classmethod
    def from_card(cls, section: dict[str, Any] | None) -> Agreement | None:
        if not section:
            return None
        agreement = cls(float(section["logit_spread"]), float(section["diameter_ratio"]))
        if not (agreement.logit_spread > 0 and agreement.diameter_ratio >= 1):
            raise BusdxError(f"bad lesion_reading.agreement in the card: {section}")
        return agreement

    def disagreement(self, views: Sequence[ViewScore]) -> str:
        """Why ``views`` cannot be one lesion, or "" when they can."""
        why = []
        if logit_spread(views) > self.logit_spread:
            logits = [v.logit for v in views]
            low, high = (100 * float(sigmoid(z / views[0].temperature))
                         for z in (min(logits), max(logits)))
            why.append(f"their probabilities differ more than any two views of one validation "
                       f"lesion did ({low:.1f}% to {high:.1f}%)")
        ratio = diameter_ratio(views)
        if ratio is not None and ratio > self.diameter_ratio:
            sizes = [v.longest_diameter for v in views]
            why.append(f"their lesions differ in size more than any two views of one "
                       f"validation lesion did (longest diameters {min(sizes):.3g} to "
                       f"{max(sizes):.3g} {views[0].units})")
        return " and ".join(why)


def logit_spread(views: Sequence[ViewScore]) -> float:
    """The largest minus the smallest of the views' served logits."""
    logits = [v.logit for v in views]
    return max(logits) - min(logits)


def diameter_ratio(views: Sequence[ViewScore]) -> float | None:
    """The longest over the shortest of the views' longest diameters; None when a view has no
    lesion or their units differ (sizes in px and mm cannot be compared)."""
    sizes = [v.longest_diameter for v in views]
    if not all(sizes) or len({v.units for v in views}) != 1:
        return None
    return max(sizes) / min(sizes)


@dataclass(frozen=True)
class ViewScore:
    """What a lesion reading needs of one analysed view, without its image arrays (a folder of
    images is read view by view and the lesions are read at the end)."""

    logit: float
    temperature: float
    lesion_found: bool
    model_version: str
    unusual: bool = False  # the view got the input check's caution (unlike the training images)
    # the outlined lesion's longest diameter and its units ("mm" or "px"); None: no lesion
    longest_diameter: float | None = None
    units: str | None = None
    # the view may not be a breast ultrasound at all (Analysis.not_ultrasound)
    not_ultrasound: bool = False

    @classmethod
    def of(cls, analysis) -> ViewScore:
        m = analysis.measurements
        return cls(analysis.logit, analysis.temperature, analysis.lesion_found,
                   analysis.model_version, analysis.unusual,
                   m.longest_diameter if m else None, m.units if m else None,
                   analysis.not_ultrasound)


@dataclass(frozen=True)
class LesionReading:
    probability: float  # calibrated, from the mean of the views' served logits
    # "benign" or "malignant" at ``threshold``; "no lesion" when no view shows one; "call
    # withheld" when a view may not be a breast ultrasound at all
    label: str
    threshold: float  # the card's lesion threshold
    risk: RiskBand | None  # None when no view shows a lesion or the call is withheld
    logit: float  # mean of the views' served logits
    temperature: float
    views: int
    views_without_lesion: int  # views where the segmenter found nothing (whole-image logit)
    note: str
    model_version: str
    views_unusual: int = 0  # views the input check found unlike the training images
    # the views cannot be one lesion (Agreement): a caution, the reading is still given
    views_disagree: bool = False
    views_not_ultrasound: int = 0  # views that may not be a breast ultrasound: no call then

    @property
    def malignant_at_threshold(self) -> bool:
        """Whether a view shows a lesion and the probability is at or above the lesion
        threshold, whether the call is shown or withheld (Analysis.malignant_at_threshold)."""
        return self.views_without_lesion < self.views and self.probability >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "label": self.label,
            "threshold": self.threshold,
            "risk_band": self.risk.as_dict() if self.risk else None,
            "logit": self.logit,
            "views": self.views,
            "views_without_lesion": self.views_without_lesion,
            "views_unusual": self.views_unusual,
            "views_disagree": self.views_disagree,
            "views_not_ultrasound": self.views_not_ultrasound,
            "note": self.note,
            "model_version": self.model_version,
            "busdx_version": __version__,
            "disclaimer": DISCLAIMER,
        }


def read_lesion(analyses: Sequence, lesion_threshold: float | None,
                agreement: Agreement | None = None) -> LesionReading:
    """The lesion reading of ``analyses`` (busdx.inference.Analysis or ViewScore: the views of
    one lesion, analysed by the same models). ``lesion_threshold``: the models'
    ``settings.lesion_threshold``; None means the card offers no lesion reading.
    ``agreement``: the models' ``settings.lesion_agreement``; None: views are not compared."""
    if lesion_threshold is None:
        raise BusdxError("these models' card has no lesion reading (classifier.lesion_reading): "
                         "analyse the images one by one, or fit it with `busdx evaluate "
                         "classification --fit-lesion-reading`")
    if not analyses:
        raise BusdxError("a lesion reading needs at least one image")
    versions = {a.model_version for a in analyses}
    temperatures = {a.temperature for a in analyses}
    if len(versions) > 1 or len(temperatures) > 1:
        raise BusdxError(f"the views were analysed by different models: {sorted(versions)}")
    logit = float(np.mean([a.logit for a in analyses]))
    temperature = analyses[0].temperature
    # the function one image's probability comes from, so one view reads exactly as its image
    probability = float(sigmoid(logit / temperature))
    if not math.isfinite(probability):
        raise ValueError("the views' logits are not finite")
    missing = sum(not a.lesion_found for a in analyses)
    notes = []
    views = [a if isinstance(a, ViewScore) else ViewScore.of(a) for a in analyses]
    apart = agreement.disagreement(views) if agreement is not None and len(views) > 1 else ""
    foreign = sum(v.not_ultrasound for v in views)
    if foreign:
        # one chart among the views makes their mean mean nothing, whatever the others show
        notes.append(f"call withheld: {foreign} of {len(views)} views may not be a breast "
                     "ultrasound image at all (see their cautions); no benign or malignant call "
                     "and no risk band are given, the probability is for reference only")
    if apart:
        notes.append(f"these views may not show one lesion: {apart}. Check that they are "
                     "images of the same lesion of the same patient")
    none_found = missing == len(analyses)
    if none_found:
        where = ("the view: no benign or malignant call is made; the probability is the whole "
                 "image's" if len(analyses) == 1 else f"any of the {len(analyses)} views: no "
                 "benign or malignant call is made; the probability is the whole images'")
        notes.append(f"no lesion found in {where}, for reference only")
    elif missing:
        notes.append(f"no lesion found in {missing} of {len(analyses)} views: their probability "
                     "is from the whole image and is less reliable")
    unusual = sum(a.unusual for a in analyses)
    if unusual:
        notes.append(f"{unusual} of {len(analyses)} views unlike the training images (see their "
                     "cautions): the lesion threshold may not hold for this reading either")
    if len(analyses) == 1 and not none_found and not foreign:
        notes.append("one view: the reading is that image's, called at the lesion threshold")
    return LesionReading(
        probability=probability,
        label=(NO_LESION if none_found else WITHHELD if foreign
               else "malignant" if probability >= lesion_threshold else "benign"),
        threshold=lesion_threshold,
        risk=None if none_found or foreign else risk_band(min(max(probability, 0.0), 1.0)),
        logit=logit,
        temperature=temperature,
        views=len(analyses),
        views_without_lesion=missing,
        note="; ".join(notes),
        model_version=analyses[0].model_version,
        views_unusual=unusual,
        views_disagree=bool(apart),
        views_not_ultrasound=foreign,
    )
