"""External validation: the bundled models, end to end as served, on labelled images from
elsewhere (another hospital, another public set).

Nothing is refitted: the calibration and the operating threshold stay the ones frozen on BUS-BRA
validation patients, since how they travel to new scanners and populations is the question.
Every image goes through ``busdx.inference.analyze``, the function the web page, the API and
``busdx predict`` call, so the numbers describe the product, not a research variant of it.

Two layouts are read:

- a labels CSV (``--labels``, or ``labels.csv`` in the folder): columns ``image`` and ``label``
  (benign/malignant or 0/1), optionally ``mask``, ``patient`` and ``birads``; paths relative to
  the CSV's folder;
- class folders, as in BUSI: ``benign/`` and ``malignant/`` (any case), with ground-truth masks
  beside their image as ``<stem>_mask.png`` (more than one, ``<stem>_mask_1.png`` ..., are
  merged). A ``normal/`` folder (no lesion) is counted and skipped: the classifier answers
  benign-or-malignant for a lesion.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busdx.errors import BusdxError
from busdx.evaluation.classification import (
    BIRADS_LEVELS,
    ClassificationReport,
    Prediction,
    birads_sections,
    evaluate_predictions,
)
from busdx.evaluation.metrics import dice, iou, summarise
from busdx.inference.decode import is_image_file
from busdx.inference.quality import STATISTICS

log = logging.getLogger(__name__)

LABELS = {"benign": 0, "0": 0, "malignant": 1, "1": 1}
MASK_STEM = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$", re.IGNORECASE)


class ExternalDataError(BusdxError, ValueError):
    """The external folder or its labels cannot be read as either layout."""


@dataclass(frozen=True)
class ExternalCase:
    image: Path
    label: int  # 1 malignant
    patient: str
    masks: tuple[Path, ...] = ()  # ground truth, merged when several
    birads: int | None = None


@dataclass
class ExternalDataset:
    root: Path
    layout: str
    cases: list[ExternalCase]
    skipped: dict[str, int] = field(default_factory=dict)
    has_patients: bool = False


def read_external(root: str | Path, labels: str | Path | None = None) -> ExternalDataset:
    root = Path(root)
    if not root.is_dir():
        raise ExternalDataError(f"{root} is not a folder")
    if labels is None and (root / "labels.csv").is_file():
        labels = root / "labels.csv"
    dataset = _read_csv(Path(labels)) if labels is not None else _read_folders(root)
    counts = np.bincount([c.label for c in dataset.cases], minlength=2)
    if counts.min() == 0:
        raise ExternalDataError(
            f"{dataset.root} holds {counts[0]} benign and {counts[1]} malignant images: AUC, "
            "sensitivity and specificity need both classes (busdx predict analyses images "
            "without labels)")
    return dataset


def _read_csv(path: Path) -> ExternalDataset:
    if not path.is_file():
        raise ExternalDataError(f"labels file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if not {"image", "label"} <= columns:
        raise ExternalDataError(f"{path} needs the columns 'image' and 'label' (found: "
                                f"{', '.join(sorted(columns)) or 'none'})")
    cases = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        label = LABELS.get(row["label"].strip().lower())
        if label is None:
            raise ExternalDataError(f"{path}, line {n}: label {row['label']!r} is not benign, "
                                    "malignant, 0 or 1")
        birads = (row.get("birads") or "").strip()
        if birads and not (birads.isdigit() and int(birads) in BIRADS_LEVELS):
            raise ExternalDataError(f"{path}, line {n}: BI-RADS {birads!r} is not one of "
                                    f"{', '.join(map(str, BIRADS_LEVELS))}")
        image = path.parent / row["image"].strip()
        mask = (row.get("mask") or "").strip()
        cases.append(ExternalCase(
            image=image, label=label,
            patient=(row.get("patient") or "").strip() or row["image"].strip(),
            masks=(path.parent / mask,) if mask else (),
            birads=int(birads) if birads else None,
        ))
    has_patients = bool(rows) and "patient" in columns and all(
        (r.get("patient") or "").strip() for r in rows)
    return ExternalDataset(path.parent, f"labels CSV ({path.name})", cases,
                           has_patients=has_patients)


def _read_folders(root: Path) -> ExternalDataset:
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if not {"benign", "malignant"} & set(folders):
        raise ExternalDataError(
            f"{root} has neither a labels.csv (columns image,label[,mask,patient,birads]) nor "
            "benign/ and malignant/ folders; give the labels with --labels CSV")
    cases, skipped = [], {}
    if "normal" in folders:
        skipped["normal (no lesion)"] = sum(1 for p in _images(folders["normal"])
                                            if not MASK_STEM.match(p.stem))
    for name, label in (("benign", 0), ("malignant", 1)):
        if name not in folders:
            continue
        files = _images(folders[name])
        masks: dict[tuple[Path, str], list[Path]] = {}
        for p in files:
            m = MASK_STEM.match(p.stem)
            if m:
                masks.setdefault((p.parent, m["stem"]), []).append(p)
        for p in files:
            if not MASK_STEM.match(p.stem):
                cases.append(ExternalCase(
                    image=p, label=label, patient=str(p.relative_to(root)),
                    masks=tuple(sorted(masks.get((p.parent, p.stem), [])))))
    return ExternalDataset(root, "class folders (benign/, malignant/)", cases, skipped)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


@dataclass
class ExternalResult:
    dataset: ExternalDataset
    rows: list[dict]  # one per case, failures included
    classification: ClassificationReport
    predictions: list[Prediction]
    segmentation: dict | None  # served masks against the ground truth, when there is one
    failed: int
    mask_failed: int = 0  # analysed and classified, but their ground-truth mask was unusable
    input_check: dict | None = None  # images unlike the training images, and their calls
    # the model beside the site's BI-RADS, when every image has one
    reader_sections: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = self.dataset
        return {
            "data": str(d.root),
            "layout": d.layout,
            "images": len(d.cases),
            "analysed": len(self.predictions),
            "failed": self.failed,
            "masks_unusable": self.mask_failed,
            "skipped": d.skipped,
            "classes": {"benign": sum(1 for p in self.predictions if p.label == 0),
                        "malignant": sum(1 for p in self.predictions if p.label == 1)},
            "bootstrap_unit": "patient" if d.has_patients
            else "image (no patient ids given: intervals are too narrow if a patient has several)",
            "operating_point": "frozen on BUS-BRA validation (nothing refitted here)",
            "classification": {**self.classification.to_dict(), **self.reader_sections},
            "segmentation": self.segmentation,
            "input_check": self.input_check,
        }


def _ground_truth(case: ExternalCase, shape: tuple[int, int]) -> np.ndarray:
    from busdx.data.preprocess import load_mask

    merged = np.zeros(shape, dtype=bool)
    for path in case.masks:
        mask = load_mask(path)
        if mask.shape != shape:
            raise ExternalDataError(f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]}, its "
                                    f"image {shape[1]}x{shape[0]}")
        merged |= mask.astype(bool)
    return merged


def evaluate_external(
    dataset: ExternalDataset, models, logit_offset: float = 0.0, reps: int = 2000, seed: int = 0,
    progress: bool = True,
) -> ExternalResult:
    """Analyse every case as the product does and score it at the frozen operating point.
    A case that cannot be read is recorded with its error and left out of the metrics.
    ``logit_offset``: the card's Platt intercept folded into the graph (for the uncalibrated
    ECE only)."""
    from tqdm import tqdm

    from busdx.inference.pipeline import analyze

    rows, preds, dices, ious = [], [], [], []
    for case in tqdm(dataset.cases, desc="external", unit="image", disable=not progress):
        row = {"image": str(case.image.relative_to(dataset.root)) if case.image.is_relative_to(
            dataset.root) else str(case.image), "truth": "malignant" if case.label else "benign"}
        try:
            a = analyze(case.image, models, render_overlays=False)
        except (BusdxError, OSError, ValueError) as err:
            log.warning("%s: %s", case.image, err)
            rows.append({**row, "error": str(err)})
            continue
        truth = None
        try:
            truth = _ground_truth(case, a.mask.shape) if case.masks else None
        except (BusdxError, OSError, ValueError) as err:
            # a bad mask costs the image its Dice, not its place in the classification metrics
            log.warning("%s: %s (left out of Dice and IoU)", case.image, err)
            row["mask_error"] = str(err)
        preds.append(Prediction(str(case.image), case.patient, case.label, case.birads,
                                float(a.logit), a.probability))
        row.update(probability=round(a.probability, 6), call=a.label, risk_band=a.risk.name,
                   lesion_found=a.lesion_found)
        if a.input_check is not None:
            row["input_unusual"] = a.input_check.outside_text
        if truth is not None:
            served = a.mask.astype(bool)
            d, j = dice(served, truth), iou(served, truth)
            dices.append(d)
            ious.append(j)
            row.update(dice=round(d, 6), iou=round(j, 6))
        rows.append(row)
    if not preds or len({p.label for p in preds}) < 2:
        raise ExternalDataError("too few images could be analysed to score both classes "
                                f"({len(preds)} of {len(dataset.cases)}; see the warnings)")
    settings = models.settings
    report = evaluate_predictions(
        preds, settings.temperature, settings.threshold, masks="predicted",
        empty_masks=sum(1 for r in rows if r.get("lesion_found") is False), reps=reps, seed=seed,
        logit_offset=logit_offset,
    )
    segmentation = None
    if dices:
        segmentation = {"n": len(dices), "what": "served mask (largest component, holes filled) "
                        "against the ground truth, at original resolution",
                        "dice": summarise(dices), "iou": summarise(ious)}
    return ExternalResult(dataset, rows, report, preds, segmentation,
                          failed=sum(1 for r in rows if "error" in r),
                          mask_failed=sum(1 for r in rows if "mask_error" in r),
                          input_check=_input_check_summary(rows),
                          reader_sections=birads_sections(preds, settings.threshold, reps=reps,
                                                          seed=seed))


def _input_check_summary(rows: list[dict]) -> dict | None:
    """How many analysed images were unlike the training images, and how often the calls were
    right with and without that warning: does the warning mean anything on these images?"""
    checked = [r for r in rows if "input_unusual" in r]
    if not checked:
        return None

    def calls(group: list[dict]) -> dict:
        right = sum(1 for r in group if r["call"] == r["truth"])
        return {"n": len(group), "calls_right": right,
                "accuracy": right / len(group) if group else None}

    unusual = [r for r in checked if r["input_unusual"]]
    return {
        "unusual": len(unusual),
        "fraction_unusual": len(unusual) / len(checked),
        "by_statistic": {f"{k} {side}": sum(1 for r in unusual
                                            if f"{k} {side}" in r["input_unusual"].split("; "))
                         for k in STATISTICS for side in ("low", "high")},
        "calls_when_unusual": calls(unusual),
        "calls_otherwise": calls([r for r in checked if not r["input_unusual"]]),
    }


ROW_COLUMNS: Sequence[str] = ("image", "truth", "probability", "call", "risk_band", "lesion_found",
                              "input_unusual", "dice", "iou", "error", "mask_error")
