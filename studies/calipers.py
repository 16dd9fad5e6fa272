"""Does the classifier use the caliper marks that BUS-BRA's radiologists left on the images?

Some BUS-BRA images carry the "+" marks of the scanner's calipers, set on the lesion's borders
when it was measured. Other hospitals export images with or without them, so a network that
learnt to read them would call the same lesion differently there. This study finds the marks
(a bright cross with dark quadrants, isolated from other bright strokes, so that burned-in
letters are mostly passed over; ``calipers_detections.png`` shows random detections to judge
by eye), removes them (each mark's pixels filled from their surroundings), and runs the
product's own steps (segment, crop, classify) on each image with marks three ways:

- as it is;
- with the marks removed;
- sham: the same fill at the mirrored column of each mark (same depth, same fill, but over
  tissue), so that what the fill itself does is told apart from what removing the marks does.

Per split (training and validation images, patient-wise; fold 5 is not read): how often the
marks are found per class, and on the images with marks the mean logit change of each edit by
class with patient-bootstrap 95% intervals, the calls that flip at the frozen threshold and the
AUC over those images. If the network used the marks, removing them would move the logits of
one class beyond the sham. Descriptive: no model is chosen by it.

    python studies/calipers.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("calipers")

SEED = 0
REPS = 2000
ARM = 4  # half length of a mark's arms in pixels (BUS-BRA's marks span about 9 pixels)
EDITS = ("removed", "sham")


def find_marks(image: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) of each caliper mark in a gray image (uint8, or float in [0, 1])."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float32)
    if x.max() <= 1.0:
        x = x * 255.0
    k = 2 * ARM + 1
    # both lines through a pixel bright, the window's corners not: a cross, not a bar or blob
    arms = np.minimum(ndimage.uniform_filter1d(x, k, axis=1), ndimage.uniform_filter1d(x, k, axis=0))
    d = ARM - 1
    corners = np.max([np.roll(x, (s1 * d, s2 * d), (0, 1)) for s1 in (-1, 1) for s2 in (-1, 1)],
                     axis=0)
    hit = (arms >= 200) & (arms - corners >= 60) & (x >= 220)
    labels, n = ndimage.label(hit)
    if not n:
        return []
    bright = x >= 200
    h, w = x.shape
    marks = []
    for r, c in ndimage.center_of_mass(hit, labels, range(1, n + 1)):
        r, c = int(round(r)), int(round(c))
        if r < 9 or c < 9 or r + 10 > h or c + 10 > w:
            continue
        window = x[r - 9:r + 10, c - 9:c + 10]
        # letters (E, H, M...) have strokes in the quadrants between the arms; a mark has not
        quadrants = max(window[5:8, 5:8].max(), window[5:8, 11:14].max(),
                        window[11:14, 5:8].max(), window[11:14, 11:14].max())
        if quadrants >= 190:
            continue
        ring = bright[r - 9:r + 10, c - 9:c + 10].copy()
        ring[3:16, 3:16] = False  # 6 to 9 pixels out: other letters of a word fall here
        if ring.mean() < 0.06:
            marks.append((r, c))
    return marks


def mark_mask(shape: tuple[int, int], marks: list[tuple[int, int]]) -> np.ndarray:
    """The pixels a fill replaces: each mark's two arms, 7 pixels thick (the marks are
    blurred), 3 pixels longer than the arms each way."""
    mask = np.zeros(shape, dtype=bool)
    span = ARM + 3
    for r, c in marks:
        mask[max(r - 3, 0):r + 4, max(c - span, 0):c + span + 1] = True
        mask[max(r - span, 0):r + span + 1, max(c - 3, 0):c + 4] = True
    return mask


def fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with the ``mask`` pixels replaced by the mean of the unmasked pixels in the
    11 x 11 window around each (a one-pass normalised convolution)."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float32)
    keep = (~mask).astype(np.float32)
    num = ndimage.uniform_filter(x * keep, 11, mode="nearest")
    den = ndimage.uniform_filter(keep, 11, mode="nearest")
    out = x.copy()
    out[mask] = (num / np.maximum(den, 1e-6))[mask]
    return out


def sham_marks(width: int, marks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each mark mirrored across the image's vertical midline, dropping a mirrored spot that
    would fall on a mark (within 12 pixels)."""
    mirrored = [(r, width - 1 - c) for r, c in marks]
    return [(r, c) for r, c in mirrored
            if all(max(abs(r - r0), abs(c - c0)) > 12 for r0, c0 in marks)]


def image_row(record, models) -> dict:
    """One image: how many marks were found and, where there are some, the logit of the image
    as it is, with its marks filled, and with the same fill at the mirrored spots (sham)."""
    from busdx.inference.decode import decode
    from busdx.inference.pipeline import classify, segment

    def logit(image: np.ndarray) -> float:
        return classify(image, segment(image, models), models)[0] + models.settings.logit_shift

    image = decode(str(record.image_path)).image
    marks = find_marks(image)
    row = {"id": record.id, "patient": record.patient, "label": record.label,
           "marks": len(marks), "logits": None}
    if marks:
        sham = sham_marks(image.shape[1], marks)
        row["logits"] = {"original": logit(image),
                         "removed": logit(fill(image, mark_mask(image.shape, marks))),
                         "sham": logit(fill(image, mark_mask(image.shape, sham))) if sham
                         else None}
    return row


def recorded_image(collected: dict, split: str, j: int) -> dict:
    """The ``j``-th image of ``split`` as ``image_row`` gives it, from a collected record."""
    part = collected["rows"][split]
    row = {"id": part["ids"][j], "patient": part["patients"][j], "label": part["labels"][j],
           "marks": part["marks"][j], "logits": None}
    if part["marks"][j]:
        k = sum(1 for m in part["marks"][:j] if m)  # the logits are kept for marked images only
        row["logits"] = {edit: values[k] for edit, values in part["logits"].items()}
    return row


def collect(data: str, models_dir: str | None, threads: int,
            splits: tuple[str, ...] = ("training", "validation")) -> dict:
    from tqdm import tqdm

    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    split = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5))
    rows = {}
    for name, records in (("training", split.train), ("validation", split.val)):
        if name not in splits:
            continue
        part = {"ids": [], "patients": [], "labels": [], "marks": [], "logits": {}}
        edited = {e: [] for e in ("original", *EDITS)}
        for r in tqdm(records, desc=name, leave=False):
            row = image_row(r, models)
            for key, field in (("ids", "id"), ("patients", "patient"), ("labels", "label"),
                               ("marks", "marks")):
                part[key].append(row[field])
            for edit, value in (row["logits"] or {}).items():
                edited[edit].append(value)
        part["logits"] = edited
        rows[name] = part
    return {"rows": rows, "temperature": models.settings.temperature,
            "threshold": models.settings.threshold, "model_version": models.version}


def _boot_mean(values: np.ndarray, groups: np.ndarray, seed: int = SEED) -> list[float]:
    rng = np.random.default_rng(seed)
    units = np.unique(groups)
    at = {g: np.flatnonzero(groups == g) for g in units}
    means = [values[np.concatenate([at[g] for g in rng.choice(units, len(units))])].mean()
             for _ in range(REPS)]
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


def _rate(k: int, n: int) -> dict:
    from busdx.evaluation.classification import wilson_interval

    return {"k": k, "n": n, "rate": k / n if n else float("nan"),
            "ci95": list(wilson_interval(k, n)) if n else [float("nan")] * 2}


def study(collected: dict) -> dict:
    from busdx.evaluation.classification import roc_auc
    from busdx.training.calibration import sigmoid

    t, threshold = collected["temperature"], collected["threshold"]
    splits = {}
    for name, part in collected["rows"].items():
        y_all = np.array(part["labels"])
        has = np.array(part["marks"]) > 0
        y, patients = y_all[has], np.array(part["patients"])[has]
        z0 = np.array(part["logits"]["original"], dtype=np.float64)
        found = {cls: _rate(int(has[y_all == k].sum()), int((y_all == k).sum()))
                 for k, cls in ((0, "benign"), (1, "malignant"))}
        edits = {}
        for edit in EDITS:
            z = np.array([np.nan if v is None else v for v in part["logits"][edit]],
                         dtype=np.float64)
            ok = np.isfinite(z)
            change = (z - z0)[ok]
            p, p0 = sigmoid(z[ok] / t), sigmoid(z0[ok] / t)
            edits[edit] = {
                "n": int(ok.sum()),
                "auc": roc_auc(y[ok], z[ok]) if len(set(y[ok])) == 2 else float("nan"),
                "auc_original": roc_auc(y[ok], z0[ok]) if len(set(y[ok])) == 2 else float("nan"),
                "calls_flipped": int(np.sum((p >= threshold) != (p0 >= threshold))),
                "mean_logit_change": {
                    cls: {"mean": float(change[y[ok] == k].mean()),
                          "ci95": _boot_mean(change[y[ok] == k], patients[ok][y[ok] == k])}
                    for k, cls in ((0, "benign"), (1, "malignant")) if (y[ok] == k).any()},
            }
        splits[name] = {"n": len(y_all), "with_marks": found, "edits": edits}
    return {
        "question": "does the classifier use the caliper marks left on BUS-BRA's images?",
        "split": "training and validation images (patient-wise, fold 5 held out)",
        "model_version": collected["model_version"],
        "splits": splits,
        "reading": "logit changes are the edited image's logit minus the original's, on the "
                   "images where marks were found; removed: the marks filled from their "
                   "surroundings; sham: the same fill at the mirrored columns, over tissue",
    }


def detection_grid(data: str, out: Path, n: int = 48, seed: int = SEED) -> Path:
    """A grid of ``n`` random detections on the training images (each 32 x 32 pixels around a
    mark, shown 3x): to judge the detector by eye."""
    from PIL import Image

    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.decode import decode

    split = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5))
    rng = np.random.default_rng(seed)
    tiles = []
    for i in rng.permutation(len(split.train)):
        image = decode(str(split.train[i].image_path)).image
        marks = find_marks(image)
        if not marks:
            continue
        r, c = marks[int(rng.integers(len(marks)))]
        padded = np.pad(np.clip(image * 255.0, 0, 255).astype(np.uint8), 16)
        tiles.append(np.kron(padded[r:r + 32, c:c + 32], np.ones((3, 3), np.uint8)))
        if len(tiles) == n:
            break
    columns = 8
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[j:j + columns], 1)
                           for j in range(0, len(tiles), columns)], 0)
    path = out / "calipers_detections.png"
    Image.fromarray(grid).save(path)
    return path


def describe(result: dict, args, out: Path) -> None:
    detection_grid(args.data, out)
    for name, s in result["splits"].items():
        found = ", ".join(f"{c} {v['k']}/{v['n']}" for c, v in s["with_marks"].items())
        log.info("%s: marks found on %s", name, found)
        for edit, e in s["edits"].items():
            log.info("  %-8s n %d, AUC %.4f (original %.4f), flipped %d, logit change %s", edit,
                     e["n"], e["auc"], e["auc_original"], e["calls_flipped"],
                     json.dumps(e["mean_logit_change"]))


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "calipers", lambda a: collect(a.data, a.models, a.threads), study,
                     describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
