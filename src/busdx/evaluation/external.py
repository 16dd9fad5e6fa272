"""External validation: the bundled models, end to end as served, on labelled images from
elsewhere (another hospital, another public set).

Nothing is refitted: the calibration and the operating threshold stay the ones frozen on BUS-BRA
validation patients, since how they travel to new scanners and populations is the question.
Every image goes through ``busdx.inference.analyze``, the function the web page, the API and
``busdx predict`` call, so the numbers describe the product, not a research variant of it.

Two layouts are read:

- a labels CSV (``--labels``, or ``labels.csv`` in the folder): columns ``image`` and ``label``
  (benign/malignant or 0/1), optionally ``mask``, ``patient``, ``birads`` and ``frame`` (which
  frame of a cine loop the label and the mask belong to; the first when empty); paths relative
  to the CSV's folder;
- class folders, as in BUSI: ``benign/`` and ``malignant/`` (any case), with ground-truth masks
  beside their image as ``<stem>_mask.png`` (more than one, ``<stem>_mask_1.png`` ..., are
  merged). A ``normal/`` folder (no lesion) is counted and skipped: the classifier answers
  benign-or-malignant for a lesion.

When the images of one lesion are grouped (a ``lesion`` column, or ``lesion_pattern``: a regular
expression whose first group, searched in each image's path, names its lesion), the lesion
reading (busdx.inference.lesion, rule X) is scored too, at the card's frozen lesion threshold,
per image and per lesion, exactly as on BUS-BRA's test fold.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from busdx.errors import BusdxError
from busdx.evaluation.classification import (
    BIRADS_LEVELS,
    ClassificationReport,
    Prediction,
    birads_sections,
    evaluate_lesion_reading,
    evaluate_predictions,
    lesion_predictions,
    scored_logit,
)
from busdx.evaluation.metrics import dice, iou, summarise
from busdx.inference.decode import is_image_file
from busdx.inference.quality import STATISTICS
from busdx.inference.scan_area import PANES
from busdx.numeric import sigmoid

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
    lesion: str | None = None  # the lesion it shows, when the views of a lesion are grouped
    frame: int | None = None  # of a cine loop (busdx.inference.decode.parse_frame); None: first


@dataclass
class ExternalDataset:
    root: Path
    layout: str
    cases: list[ExternalCase]
    skipped: dict[str, int] = field(default_factory=dict)
    has_patients: bool = False
    lesions_from: str | None = None  # where the lesion of each image came from, when given
    dual_view: bool = False  # each image is a capture of two panes, analysed one by one

    def lesion_keys(self) -> list[str]:
        """The lesion of each case; an image outside every group is a lesion of its own."""
        return [c.lesion or f"image:{c.image}" for c in self.cases]


def read_external(root: str | Path, labels: str | Path | None = None,
                  lesion_pattern: str | None = None, dual_view: bool = False,
                  subset: str = "all") -> ExternalDataset:
    """``lesion_pattern``: group the views of each lesion by this regular expression's first
    group, searched in each image's path relative to the folder (or as written in the CSV).
    ``dual_view``: each image is a dual-view capture whose two panes are views of one lesion
    (with a pattern or a lesion column, of that lesion)."""
    from busdx.inference.lesion import compile_pattern

    root = Path(root)
    if not root.is_dir():
        raise ExternalDataError(f"{root} is not a folder")
    pattern = compile_pattern(lesion_pattern)
    if labels is None and (root / "labels.csv").is_file():
        labels = root / "labels.csv"
    from busdx.data.sites import is_breast_root

    if labels is None and is_breast_root(root):
        dataset = _read_breast(root, subset)
    elif subset != "all":
        raise ExternalDataError("--subset applies to a BrEaST-Lesions-USG folder only")
    else:
        dataset = _read_csv(Path(labels)) if labels is not None else _read_folders(root)
    if pattern is not None:
        if dataset.lesions_from is not None:
            raise ExternalDataError(f"{dataset.root} gives a 'lesion' column and --lesion-pattern "
                                    "was given too: use one of them")
        _group_by_pattern(dataset, pattern)
    if dual_view:
        dataset.dual_view = True
        if dataset.lesions_from is None:
            dataset.lesions_from = "--dual-view (the two panes of each capture)"
    if dataset.lesions_from is not None:
        _check_lesions(dataset)
    counts = np.bincount([c.label for c in dataset.cases], minlength=2)
    if counts.min() == 0:
        raise ExternalDataError(
            f"{dataset.root} holds {counts[0]} benign and {counts[1]} malignant images: AUC, "
            "sensitivity and specificity need both classes (busdx predict analyses images "
            "without labels)")
    return dataset


def _read_breast(root: Path, subset: str) -> ExternalDataset:
    """BrEaST-Lesions-USG (busdx.data.sites): its lesion scans of ``subset`` ("dev", "test" or
    "all"), one per patient, with their tumour masks; the normal scans are counted and skipped,
    as a BUSI ``normal/`` folder is."""
    from busdx.data.sites import read_breast
    from busdx.data.sites import subset as pick

    records = pick(read_breast(root), subset)
    cases = [ExternalCase(image=r.image_path, label=r.label, patient=r.patient,
                          masks=(r.mask_path,) if r.mask_path else (),
                          birads=_birads_level(r.birads))
             for r in records if r.label is not None]
    normal = sum(1 for r in records if r.label is None)
    return ExternalDataset(root, f"BrEaST-Lesions-USG ({subset})", cases,
                           skipped={"normal scans (no lesion)": normal} if normal else {},
                           has_patients=True)


def _birads_level(text: str) -> int | None:
    """"4a" -> 4; categories outside BIRADS_LEVELS (1, 6) -> None."""
    digits = text.strip()[:1]
    return int(digits) if digits.isdigit() and int(digits) in BIRADS_LEVELS else None


def _read_csv(path: Path) -> ExternalDataset:
    from busdx.inference.decode import parse_frame

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
        lesion = (row.get("lesion") or "").strip() or None
        try:
            frame = parse_frame(row.get("frame"))
        except ValueError as err:
            raise ExternalDataError(f"{path}, line {n}: {err}") from err
        cases.append(ExternalCase(
            image=image, label=label,
            # without a patient id, a lesion's views still go into the bootstrap together
            patient=(row.get("patient") or "").strip() or lesion or row["image"].strip(),
            masks=(path.parent / mask,) if mask else (),
            birads=int(birads) if birads else None,
            lesion=lesion,
            frame=frame,
        ))
    has_patients = bool(rows) and "patient" in columns and all(
        (r.get("patient") or "").strip() for r in rows)
    return ExternalDataset(path.parent, f"labels CSV ({path.name})", cases,
                           has_patients=has_patients,
                           lesions_from="the 'lesion' column" if "lesion" in columns else None)


def _group_by_pattern(dataset: ExternalDataset, pattern) -> None:
    from busdx.inference.lesion import lesion_key

    cases = []
    for c in dataset.cases:
        path = c.image.relative_to(dataset.root) if c.image.is_relative_to(dataset.root) \
            else c.image
        key = lesion_key(path, pattern)
        lesion = key if key != path.as_posix() else None  # unmatched: a lesion of its own
        patient = c.patient if dataset.has_patients or lesion is None else lesion
        cases.append(replace(c, lesion=lesion, patient=patient))
    dataset.cases = cases
    dataset.lesions_from = f"--lesion-pattern {pattern.pattern!r}"


def _check_lesions(dataset: ExternalDataset) -> None:
    """The views of one lesion share its pathology (and its patient, when patients are given):
    a grouping that mixes them is a wrong pattern or column, caught before the long run."""
    groups: dict[str, list[ExternalCase]] = {}
    for case, key in zip(dataset.cases, dataset.lesion_keys(), strict=True):
        groups.setdefault(key, []).append(case)
    for key, cases in groups.items():
        names = ", ".join(c.image.name for c in cases[:4]) + (" ..." if len(cases) > 4 else "")
        if len({c.label for c in cases}) > 1:
            raise ExternalDataError(f"lesion {key!r} groups benign and malignant images "
                                    f"({names}): check {dataset.lesions_from}")
        if dataset.has_patients and len({c.patient for c in cases}) > 1:
            raise ExternalDataError(f"lesion {key!r} groups images of different patients "
                                    f"({names}): check {dataset.lesions_from}")
    if not dataset.dual_view and not any(len(cases) > 1 for cases in groups.values()):
        log.warning("%s puts every image in a lesion of its own: the lesion reading is then the "
                    "per-image reading at the lesion threshold", dataset.lesions_from)


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
    # rule X's lesion reading per image and per lesion, when the views of lesions are grouped
    lesion_reading: dict | None = None

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
            else "lesion (no patient ids given: intervals are too narrow if a patient has several)"
            if d.lesions_from is not None
            else "image (no patient ids given: intervals are too narrow if a patient has several)",
            "lesions_from": d.lesions_from,
            # with --dual-view each capture gives two panes: "analysed" and the metrics per
            # image count panes
            "dual_view": d.dual_view,
            "operating_point": "frozen on BUS-BRA validation (nothing refitted here)",
            "classification": {**self.classification.to_dict(), **self.reader_sections},
            "segmentation": self.segmentation,
            "input_check": self.input_check,
            # images whose frame or screen was cut off before the analysis (scan_area column)
            "framed": sum(1 for r in self.rows if r.get("scan_area")),
            # cine loops, each read at one frame (the labels CSV's frame column, else the first)
            "cine_loops": sum(1 for r in self.rows if r.get("frames")),
            "lesion_reading": self.lesion_reading,
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

    from busdx.inference.decode import decode
    from busdx.inference.pipeline import analyze

    panes = PANES if dataset.dual_view else (None,)
    rows, preds, dices, ious, keys = [], [], [], [], []
    for case, key in tqdm(list(zip(dataset.cases, dataset.lesion_keys(), strict=True)),
                          desc="external", unit="image", disable=not progress):
        name = str(case.image.relative_to(dataset.root)) if case.image.is_relative_to(
            dataset.root) else str(case.image)
        base = {"truth": "malignant" if case.label else "benign", "lesion": case.lesion}
        views = [(p, name if p is None else f"{name}#{p}") for p in panes]
        try:
            decoded = decode(case.image, frame=case.frame)
        except (BusdxError, OSError, ValueError) as err:
            log.warning("%s: %s", case.image, err)
            rows += [{**base, "image": view, "error": str(err)} for _, view in views]
            continue
        # read once per image, cut to each pane of a capture
        truth, mask_error = None, None
        try:
            truth = _ground_truth(case, decoded.image.shape) if case.masks else None
        except (BusdxError, OSError, ValueError) as err:
            # a bad mask costs the image its Dice, not its place in the classification metrics
            log.warning("%s: %s (left out of Dice and IoU)", case.image, err)
            mask_error = str(err)
        for pane, view in views:
            row = {**base, "image": view}
            try:
                a = analyze(decoded, models, render_overlays=False, pane=pane)
            except (BusdxError, OSError, ValueError) as err:
                log.warning("%s: %s", view, err)
                rows.append({**row, "error": str(err)})
                continue
            if mask_error is not None:
                row["mask_error"] = mask_error
            pane_truth = truth if truth is None or a.pane is None else a.pane[1].crop(truth)
            rows.append(_scored_row(row, a, pane_truth, dices, ious))
            logit = scored_logit(a.logit, a.lesion_found)
            preds.append(Prediction(view if pane else str(case.image), case.patient, case.label,
                                    case.birads, logit, float(sigmoid(logit / a.temperature))))
            keys.append(key)
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
    lesion = None
    if dataset.lesions_from is not None:
        lesion = _lesion_reading(preds, keys, rows, settings, reps, seed, logit_offset)
    return ExternalResult(dataset, rows, report, preds, segmentation,
                          failed=sum(1 for r in rows if "error" in r),
                          mask_failed=sum(1 for r in rows if "mask_error" in r),
                          input_check=_input_check_summary(rows, settings.threshold),
                          reader_sections=birads_sections(preds, settings.threshold, reps=reps,
                                                          seed=seed),
                          lesion_reading=lesion)


def _scored_row(row: dict, a, truth: np.ndarray | None, dices: list, ious: list) -> dict:
    """``row`` with the analysis ``a``'s answer, and its Dice and IoU against ``truth``."""
    row.update(probability=round(a.probability, 6), call=a.label,
               risk_band=a.risk.name if a.risk else "", lesion_found=a.lesion_found)
    if a.input_check is not None:
        row["input_unusual"] = a.input_check.outside_text
    if a.scan_area is not None:  # a frame or a screen was cut off: a site should know
        area = a.scan_area
        row["scan_area"] = f"{area.left} {area.top} {area.width} {area.height}"
    if a.scan_area_from is not None:
        row["scan_area_from"] = a.scan_area_from
    if a.frames > 1:  # a cine loop: which of its frames was scored
        row.update(frame=a.frame, frames=a.frames)
    if truth is not None:
        served = a.mask.astype(bool)
        d, j = dice(served, truth), iou(served, truth)
        dices.append(d)
        ious.append(j)
        row.update(dice=round(d, 6), iou=round(j, 6))
    return row


def _lesion_reading(preds: list[Prediction], keys: list[str], rows: list[dict], settings,
                    reps: int, seed: int, logit_offset: float) -> dict:
    """Rule X's lesion reading of the analysed images at the card's frozen lesion threshold;
    a view that could not be analysed is left out of its lesion, as ``busdx predict`` does.
    Each analysed row gets its lesion's probability and call."""
    if settings.lesion_threshold is None:
        return {"skipped": "these models' card offers no lesion reading (a site recalibration "
                           "drops it: its threshold belongs to the bundled calibration)"}
    images, _ = lesion_predictions(preds, keys, settings.temperature)
    analysed = (r for r in rows if "error" not in r)
    for row, p in zip(analysed, images, strict=True):
        row.update(lesion_probability=round(p.prob, 6),
                   lesion_call="malignant" if p.prob >= settings.lesion_threshold else "benign")
    empty = sum(1 for r in rows if r.get("lesion_found") is False)
    return {"threshold": settings.lesion_threshold,
            "rule": "docs/selection_rules.md, rule X: the mean of the views' served logits, "
                    "called at the card's lesion threshold (frozen on BUS-BRA validation)",
            **evaluate_lesion_reading(preds, keys, settings.temperature,
                                      settings.lesion_threshold, masks="predicted",
                                      empty_masks=empty, reps=reps, seed=seed,
                                      logit_offset=logit_offset)}


def _input_check_summary(rows: list[dict], threshold: float) -> dict | None:
    """How many analysed images were unlike the training images, and how often the calls were
    right with and without that warning: does the warning mean anything on these images? A call
    withheld (the image may not be an ultrasound) is judged as the call the networks made at
    ``threshold``, since the question is whether the warning marks calls that go wrong."""
    from busdx.inference.pipeline import WITHHELD

    checked = [r for r in rows if "input_unusual" in r]
    if not checked:
        return None

    def call(r: dict) -> str:
        if r["call"] != WITHHELD:
            return r["call"]
        return "malignant" if r["probability"] >= threshold else "benign"

    def calls(group: list[dict]) -> dict:
        right = sum(1 for r in group if call(r) == r["truth"])
        return {"n": len(group), "calls_right": right,
                "accuracy": right / len(group) if group else None}

    unusual = [r for r in checked if r["input_unusual"]]
    return {
        "unusual": len(unusual),
        "fraction_unusual": len(unusual) / len(checked),
        "by_statistic": {name: sum(1 for r in unusual if name in r["input_unusual"].split("; "))
                         for name in [f"{k} {side}" for k in STATISTICS
                                      for side in ("low", "high")] + ["colour high"]},
        "calls_when_unusual": calls(unusual),
        "calls_otherwise": calls([r for r in checked if not r["input_unusual"]]),
    }


ROW_COLUMNS: Sequence[str] = ("image", "truth", "probability", "call", "risk_band", "lesion_found",
                              "input_unusual", "scan_area", "scan_area_from", "frame", "frames",
                              "dice", "iou", "lesion",
                              "lesion_probability",
                              "lesion_call", "error", "mask_error")
