"""Several datasets in one table: each image with its site, patient, label and split.

BUS-BRA (Brazil) keeps its official folds: fold 5 is the test set, folds 1-4 train and
validate. BrEaST-Lesions-USG (Poland, whole scans, one per patient) is split once, by patient and
stratified by class with seed 0, into a development half (may be trained on and used to choose)
and a test half (never): docs/generalisation_plan.md says why and how each is used.

Standard library only, like busdx.data.index, so that the serving install can read it.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from busdx.data.index import DatasetError, DatasetIndex, load_index

SITES = ("busbra", "breast")
BREAST_CSV = "clinical-data.csv"
BREAST_FOLDER = "images_and_masks"
BREAST_SEED = 0
# which BrEaST subset a command may score: dev (choices and training), test (never), all
SUBSETS = ("dev", "test", "all")


@dataclass(frozen=True)
class SiteRecord:
    site: str
    id: str
    patient: str
    # "benign", "malignant", or "normal" (a scan without a lesion, no mask)
    pathology: str
    image_path: Path
    mask_path: Path | None
    # BUS-BRA: "fold1".."fold5"; BrEaST: "dev" or "test"
    split: str
    birads: str = ""
    scanner: str = ""

    @property
    def label(self) -> int | None:
        """1 malignant, 0 benign, None without a lesion."""
        return {"benign": 0, "malignant": 1}.get(self.pathology)


def is_breast_root(root: str | Path) -> bool:
    root = Path(root)
    return (root / BREAST_CSV).is_file() and (root / BREAST_FOLDER).is_dir()


def read_breast(root: str | Path) -> list[SiteRecord]:
    """BrEaST-Lesions-USG's scans from its clinical spreadsheet (as CSV), with their split."""
    root = Path(root)
    if not is_breast_root(root):
        raise DatasetError(f"{root} is not a BrEaST-Lesions-USG folder ({BREAST_CSV} and "
                           f"{BREAST_FOLDER}/ expected)")
    with (root / BREAST_CSV).open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"CaseID", "Image_filename", "Mask_tumor_filename", "Classification"} - set(rows[0])
    if missing:
        raise DatasetError(f"{root / BREAST_CSV} lacks the columns {sorted(missing)}")
    records = []
    for row in rows:
        pathology = row["Classification"].strip().lower()
        if pathology not in ("benign", "malignant", "normal"):
            raise DatasetError(f"{root / BREAST_CSV}: case {row['CaseID']} is classified "
                               f"{row['Classification']!r}")
        mask = row["Mask_tumor_filename"].strip()
        records.append(SiteRecord(
            site="breast", id=Path(row["Image_filename"]).stem, patient=f"breast-{row['CaseID']}",
            pathology=pathology, image_path=root / BREAST_FOLDER / row["Image_filename"].strip(),
            mask_path=root / BREAST_FOLDER / mask if mask else None, split="",
            birads=row.get("BIRADS", "").strip()))
    splits = breast_split(records)
    return [SiteRecord(**{**r.__dict__, "split": splits[r.patient]}) for r in records]


def breast_split(records: Sequence[SiteRecord], seed: int = BREAST_SEED) -> dict[str, str]:
    """patient -> "dev" or "test": half of each class (rounded down for dev), drawn with
    ``seed``. The patients are sorted first, so the split depends on nothing but the list."""
    out = {}
    for pathology in ("benign", "malignant", "normal"):
        patients = sorted({r.patient for r in records if r.pathology == pathology})
        random.Random(f"{seed}-{pathology}").shuffle(patients)
        half = len(patients) // 2
        out.update({p: "dev" for p in patients[:half]})
        out.update({p: "test" for p in patients[half:]})
    return out


def read_busbra(root: str | Path | None) -> list[SiteRecord]:
    return busbra_records(load_index(root))


def busbra_records(index: DatasetIndex) -> list[SiteRecord]:
    """BUS-BRA's records (an index already read) as rows of the table."""
    return [SiteRecord(site="busbra", id=r.id, patient=f"busbra-{r.patient}",
                       pathology=r.pathology, image_path=r.image_path, mask_path=r.mask_path,
                       split=f"fold{r.fold}" if r.fold is not None else "",
                       birads=str(r.birads), scanner=r.scanner)
            for r in index.records]


def load_sites(busbra: str | Path | None = None, breast: str | Path | None = None
               ) -> list[SiteRecord]:
    """Every image of the sites given, in one table (``site`` tells them apart)."""
    records: list[SiteRecord] = []
    if busbra is not None:
        records += read_busbra(busbra)
    if breast is not None:
        records += read_breast(breast)
    if not records:
        raise DatasetError("no site given: name the BUS-BRA and/or BrEaST folders")
    return records


def subset(records: Sequence[SiteRecord], which: str) -> list[SiteRecord]:
    if which not in SUBSETS:
        raise DatasetError(f"subset {which!r} is not one of {SUBSETS}")
    return [r for r in records if which == "all" or r.split == which]
