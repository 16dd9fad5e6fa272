"""The BUS-BRA dataset index: one record per image, read from ``bus_data.csv`` and the fold files.

Only the standard library and numpy are used here, so that ``busdx data check`` works from the
serving install (no pandas, no torch).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from busdx.errors import BusdxError

log = logging.getLogger(__name__)

DATA_ENV = "BUSDX_DATA"
CSV_NAME = "bus_data.csv"
FOLD_FILES = {5: "5-fold-cv.csv", 10: "10-fold-cv.csv"}
PATHOLOGIES = ("benign", "malignant")


class DatasetError(BusdxError, ValueError):
    """The dataset root is missing or malformed in a way that makes it unusable."""


@dataclass(frozen=True)
class Record:
    """One BUS-BRA image and what ``bus_data.csv`` says of it."""

    id: str
    patient: str
    pathology: str
    histology: str
    birads: int
    scanner: str
    side: str
    width: int
    height: int
    bbox: tuple[int, int, int, int]
    image_path: Path
    mask_path: Path
    fold: int | None = None
    fold10: int | None = None

    @property
    def label(self) -> int:
        """1 for malignant, 0 for benign."""
        return int(self.pathology == "malignant")


@dataclass
class DatasetIndex:
    root: Path
    records: list[Record]
    n_folds: int | None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def patients(self) -> set[str]:
        return {r.patient for r in self.records}

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    def subset(self, ids) -> list[Record]:
        lookup = self.by_id()
        return [lookup[i] for i in ids]


def resolve_root(data: str | os.PathLike | None) -> Path:
    """The dataset root from ``--data`` or, failing that, ``$BUSDX_DATA``."""
    value = data if data else os.environ.get(DATA_ENV)
    if not value:
        raise DatasetError(f"no dataset given: pass --data DIR or set {DATA_ENV}")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    if not (root / CSV_NAME).is_file():
        raise DatasetError(f"{root} has no {CSV_NAME}: is it a BUS-BRA root?")
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    # newline="" lets csv handle the Windows line endings some copies carry.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(fh)]


def _parse_bbox(text: str) -> tuple[int, int, int, int]:
    values = json.loads(text)
    if len(values) != 4:
        raise ValueError(f"bounding box {text!r} does not have four numbers")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _read_folds(path: Path) -> dict[str, int]:
    folds = {}
    for row in _read_csv(path):
        try:
            folds[row["ID"]] = int(row["kFold"])
        except (KeyError, ValueError) as err:
            raise DatasetError(f"{path.name}: bad row {row}") from err
    return folds


def load_index(data: str | os.PathLike | None = None) -> DatasetIndex:
    """Read a BUS-BRA root (``Images/``, ``Masks/``, ``bus_data.csv``, optional fold files).

    Rows that cannot be parsed raise :class:`DatasetError`; anything merely suspicious is kept in
    ``index.warnings``. Whether the files exist is for :func:`busdx.data.check.check_dataset`.
    """
    root = resolve_root(data)
    rows = _read_csv(root / CSV_NAME)
    required = {"ID", "Case", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"}
    if rows and not required <= rows[0].keys():
        missing = ", ".join(sorted(required - rows[0].keys()))
        raise DatasetError(f"{CSV_NAME} lacks the columns {missing}")
    folds5 = _read_folds(root / FOLD_FILES[5]) if (root / FOLD_FILES[5]).is_file() else None
    folds10 = _read_folds(root / FOLD_FILES[10]) if (root / FOLD_FILES[10]).is_file() else None

    records, warnings, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        rid = row["ID"]
        if rid in seen:
            raise DatasetError(f"{CSV_NAME} line {line}: duplicate ID {rid}")
        seen.add(rid)
        pathology = row["Pathology"].lower()
        if pathology not in PATHOLOGIES:
            raise DatasetError(f"{CSV_NAME} line {line}: unknown pathology {row['Pathology']!r}")
        try:
            record = Record(
                id=rid,
                patient=row["Case"],
                pathology=pathology,
                histology=row.get("Histology", ""),
                birads=int(row["BIRADS"]),
                scanner=row["Device"],
                side=row["Side"],
                width=int(row["Width"]),
                height=int(row["Height"]),
                bbox=_parse_bbox(row["BBOX"]),
                image_path=root / "Images" / f"{rid}.png",
                mask_path=root / "Masks" / f"{rid.replace('bus_', 'mask_', 1)}.png",
                fold=folds5.get(rid) if folds5 is not None else None,
                fold10=folds10.get(rid) if folds10 is not None else None,
            )
        except (ValueError, KeyError) as err:
            raise DatasetError(f"{CSV_NAME} line {line} ({rid}): {err}") from err
        if folds5 is not None and record.fold is None:
            warnings.append(f"{rid} is in {CSV_NAME} but not in {FOLD_FILES[5]}")
        records.append(record)
    if folds5 is not None:
        extra = sorted(set(folds5) - seen)
        if extra:
            warnings.append(f"{len(extra)} IDs in {FOLD_FILES[5]} are not in {CSV_NAME}: {extra[:5]}")
    return DatasetIndex(root=root, records=records, n_folds=5 if folds5 else None, warnings=warnings)
