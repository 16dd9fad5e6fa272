"""Patient-wise splits.

The test set is one official fold of ``5-fold-cv.csv``. Training and validation come from the
other folds, rebuilt by patient: the official ``valid_k`` columns split per image, which puts the
two views of one patient on both sides. Without a fold file, folds are drawn here, grouped by
patient and stratified by pathology, with a fixed seed.

For cross-validation inside the training folds, ``val_fold`` makes a whole other fold the
validation set (the rest train): with test fold 5, ``val_fold`` 1 to 4 give four models whose
validation sets cover every training image once, patient-wise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from busdx.data.index import DatasetIndex, Record
from busdx.errors import SplitError


@dataclass(frozen=True)
class SplitConfig:
    test_fold: int = 5
    val_fraction: float = 0.15
    seed: int = 0
    n_folds: int = 5
    val_fold: int | None = None  # a whole fold as validation instead of val_fraction


def validation_name(split_seed: int, val_fold: int | None) -> str:
    """Which validation images a run used, in words (records, logs and errors)."""
    return (f"official fold {val_fold}" if val_fold is not None
            else f"the patient-wise share drawn with split seed {split_seed}")


@dataclass
class Split:
    train: list[Record]
    val: list[Record]
    test: list[Record]
    test_fold: int
    source: str  # "official" when the test fold comes from 5-fold-cv.csv, else "generated"

    def parts(self) -> dict[str, list[Record]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _patient_labels(records: Iterable[Record]) -> dict[str, int]:
    # A patient counts as malignant if any of their images is; in BUS-BRA none is mixed.
    labels: dict[str, int] = defaultdict(int)
    for r in records:
        labels[r.patient] = max(labels[r.patient], r.label)
    return dict(labels)


def _shuffled_by_class(records: Sequence[Record], seed: int) -> list[list[str]]:
    labels = _patient_labels(records)
    rng = np.random.default_rng(seed)
    groups = []
    for cls in (0, 1):
        patients = sorted((p for p, y in labels.items() if y == cls), key=_natural_key)
        rng.shuffle(patients)
        groups.append(patients)
    return groups


def _natural_key(patient: str):
    return (0, int(patient), "") if patient.isdigit() else (1, 0, patient)


def patient_folds(records: Sequence[Record], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Assign every patient to a fold in 1..n_folds, stratified by pathology."""
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    assignment = {}
    offset = 0
    for patients in _shuffled_by_class(records, seed):
        for i, p in enumerate(patients):
            assignment[p] = (i + offset) % n_folds + 1
        offset += len(patients)
    return assignment


def split_train_val(records: Sequence[Record], val_fraction: float, seed: int):
    """Split records into (train, val) by patient, stratified by pathology."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    val_patients: set[str] = set()
    for patients in _shuffled_by_class(records, seed):
        n_val = int(round(val_fraction * len(patients)))
        if len(patients) > 1:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val_patients.update(patients[:n_val])
    train = [r for r in records if r.patient not in val_patients]
    val = [r for r in records if r.patient in val_patients]
    return train, val


def make_split(index: DatasetIndex, config: SplitConfig | None = None) -> Split:
    config = config or SplitConfig()
    records = index.records
    if index.n_folds is not None:
        folds = {r.id: r.fold for r in records}
        n_folds, source = index.n_folds, "official"
    else:
        by_patient = patient_folds(records, config.n_folds, config.seed)
        folds = {r.id: by_patient[r.patient] for r in records}
        n_folds, source = config.n_folds, "generated"
    if not 1 <= config.test_fold <= n_folds:
        raise SplitError(f"test fold must be in 1..{n_folds}, got {config.test_fold}")
    test = [r for r in records if folds[r.id] == config.test_fold]
    rest = [r for r in records if folds[r.id] is not None and folds[r.id] != config.test_fold]
    if config.val_fold is None:
        train, val = split_train_val(rest, config.val_fraction, config.seed)
    else:
        if config.val_fold == config.test_fold or not 1 <= config.val_fold <= n_folds:
            raise SplitError(f"validation fold must be in 1..{n_folds} and not the test fold "
                             f"{config.test_fold}, got {config.val_fold}")
        train = [r for r in rest if folds[r.id] != config.val_fold]
        val = [r for r in rest if folds[r.id] == config.val_fold]
    return Split(train=train, val=val, test=test, test_fold=config.test_fold, source=source)


def overlapping_patients(split: Split) -> set[str]:
    """Patients found in more than one part of the split (should be empty)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, part in split.parts().items():
        for r in part:
            seen[r.patient].add(name)
    return {p for p, parts in seen.items() if len(parts) > 1}
