"""``busdx data check``: is this BUS-BRA root fit to train and evaluate on?

Errors are what would corrupt training or evaluation (a missing or unreadable file, a mask whose
size differs from its image, an empty mask, a patient on two sides of a split). Warnings are
what a user should know but that the loader handles (the CSV's size disagreeing with the file:
the file wins; files that no CSV row names).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from busdx.data.index import FOLD_FILES, DatasetIndex, Record, load_index
from busdx.data.splits import SplitConfig, make_split, overlapping_patients

log = logging.getLogger(__name__)


@dataclass
class SplitSummary:
    images: int
    patients: int
    pathology: dict[str, int]
    birads: dict[str, int]
    scanner: dict[str, int]


@dataclass
class CheckReport:
    root: str
    images: int
    patients: int
    pathology: dict[str, int]
    birads: dict[str, int]
    scanners: dict[str, int]
    fold_source: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) after a full decode, so truncated files are caught."""
    with Image.open(path) as img:
        img.load()
        return img.size


def _check_pair(name: str, image_path: Path, mask_path: Path | None, errors: list[str]
                ) -> tuple[int, int] | None:
    """The image decodes, and its mask (when it has one) decodes, has its size and is not
    empty; returns the image's (width, height), None when the image or its mask cannot be
    read."""
    try:
        size = _image_size(image_path)
    except (OSError, SyntaxError) as err:
        errors.append(f"{name}: image {image_path.name} is unreadable ({err})")
        return None
    if mask_path is None:
        return size
    try:
        with Image.open(mask_path) as img:
            mask = np.asarray(img.convert("L"))
    except (OSError, SyntaxError) as err:
        errors.append(f"{name}: mask {mask_path.name} is unreadable ({err})")
        return None
    if (mask.shape[1], mask.shape[0]) != size:
        errors.append(
            f"{name}: image is {size[0]}x{size[1]} but its mask is {mask.shape[1]}x{mask.shape[0]}"
        )
    if not mask.any():
        errors.append(f"{name}: mask is empty")
    return size


def _check_record(record: Record, errors: list[str], warnings: list[str]) -> None:
    if not record.image_path.is_file():
        errors.append(f"{record.id}: image file {record.image_path.name} is missing")
        return
    if not record.mask_path.is_file():
        errors.append(f"{record.id}: mask file {record.mask_path.name} is missing")
        return
    size = _check_pair(record.id, record.image_path, record.mask_path, errors)
    if size is not None and (record.width, record.height) != size:
        warnings.append(
            f"{record.id}: bus_data.csv says {record.width}x{record.height}, the file is "
            f"{size[0]}x{size[1]} (the file is used)"
        )


def _summary(records: list[Record]) -> SplitSummary:
    return SplitSummary(
        images=len(records),
        patients=len({r.patient for r in records}),
        pathology=dict(sorted(Counter(r.pathology for r in records).items())),
        birads=dict(sorted(Counter(str(r.birads) for r in records).items())),
        scanner=dict(sorted(Counter(r.scanner for r in records).items())),
    )


def _unlisted(index: DatasetIndex, folder: str, listed: set[str]) -> list[str]:
    path = index.root / folder
    if not path.is_dir():
        return [f"the folder {folder}/ is missing"]
    extra = sorted(p.name for p in path.glob("*.png") if p.name not in listed)
    if not extra:
        return []
    shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
    return [f"{len(extra)} files in {folder}/ have no row in bus_data.csv: {shown}"]


def check_dataset(data, split_config: SplitConfig | None = None, progress: bool = True) -> CheckReport:
    """Check every file of the dataset and the patient-wise split. Raises DatasetError only
    when the CSV itself cannot be read."""
    index = load_index(data)
    errors: list[str] = []
    warnings: list[str] = list(index.warnings)
    for record in tqdm(index.records, desc="checking", unit="img", disable=not progress):
        _check_record(record, errors, warnings)
    warnings += _unlisted(index, "Images", {r.image_path.name for r in index.records})
    warnings += _unlisted(index, "Masks", {r.mask_path.name for r in index.records})
    if index.n_folds is None:
        warnings.append(f"no {FOLD_FILES[5]}: folds are generated by patient with a fixed seed")
    summary = _summary(index.records)
    report = CheckReport(
        root=str(index.root),
        images=summary.images,
        patients=summary.patients,
        pathology=summary.pathology,
        birads=summary.birads,
        scanners=summary.scanner,
        fold_source="official" if index.n_folds else "generated",
        errors=errors,
        warnings=warnings,
    )
    split = make_split(index, split_config)
    report.splits = {name: _summary(part) for name, part in split.parts().items()}
    shared = overlapping_patients(split)
    if shared:
        errors.append(f"{len(shared)} patients are on more than one side of the split")
    return report


def format_report(report: CheckReport) -> str:
    lines = [
        f"BUS-BRA root: {report.root}",
        f"images: {report.images}   patients: {report.patients}",
        "pathology: " + ", ".join(f"{k} {v}" for k, v in report.pathology.items()),
        "BI-RADS: " + ", ".join(f"{k}: {v}" for k, v in report.birads.items()),
        "scanners: " + ", ".join(f"{k} ({v})" for k, v in report.scanners.items()),
        f"folds: {report.fold_source}",
        "",
        f"{'split':<6} {'images':>6} {'patients':>8} {'benign':>7} {'malig.':>7} {'%malig.':>7}"
        "  BI-RADS 2/3/4/5",
    ]
    for name, s in report.splits.items():
        malignant = s.pathology.get("malignant", 0)
        share = 100.0 * malignant / s.images if s.images else 0.0
        birads = "/".join(str(s.birads.get(str(b), 0)) for b in (2, 3, 4, 5))
        lines.append(
            f"{name:<6} {s.images:>6} {s.patients:>8} {s.pathology.get('benign', 0):>7} "
            f"{malignant:>7} {share:>6.1f}%  {birads}"
        )
    lines.append("")
    for w in report.warnings:
        lines.append(f"WARNING: {w}")
    for e in report.errors:
        lines.append(f"ERROR: {e}")
    verdict = "OK" if report.ok else f"FAILED: {len(report.errors)} errors would corrupt training"
    lines.append(f"{verdict} ({len(report.warnings)} warnings)")
    return "\n".join(lines)


def check_breast(root: str | Path) -> tuple[list[str], dict[str, int]]:
    """BrEaST-Lesions-USG: every scan readable, every lesion's mask there, readable, of its
    scan's size and not empty. Returns the errors and the count per (split, class)."""
    from busdx.data.sites import read_breast

    errors: list[str] = []
    counts: dict[str, int] = {}
    for r in read_breast(root):
        key = f"{r.split} {r.pathology}"
        counts[key] = counts.get(key, 0) + 1
        if r.mask_path is None and r.label is not None:
            errors.append(f"{r.id}: a {r.pathology} scan without a lesion mask")
        _check_pair(r.id, r.image_path, r.mask_path, errors)
    return errors, dict(sorted(counts.items()))
