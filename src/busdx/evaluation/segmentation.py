"""Evaluating the exported segmenter on the test fold with ONNX Runtime (no torch).

Each image is letterboxed as in serving, its sigmoid probability map is mapped back to the
original pixel grid (bilinear, :meth:`Letterbox.invert`) and thresholded at the card's
``segmenter.threshold`` (0.5 unless a validation sweep moved it); Dice and IoU are computed
there, against the original mask. The "postprocessed" scores add what the product does
next (largest connected component, holes filled), so the card reports both the network and what a
user sees.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from busdx.data.index import Record, load_index, resolve_root
from busdx.data.preprocess import load_gray, load_mask
from busdx.data.splits import SplitConfig, make_split, validation_name
from busdx.errors import BusdxError
from busdx.evaluation.metrics import dice, iou, summarise, summarise_by_group
from busdx.evaluation.model_card import update_card

log = logging.getLogger(__name__)

THRESHOLD = 0.5


@dataclass
class ImageScore:
    id: str
    scanner: str
    dice: float
    iou: float
    dice_post: float
    iou_post: float


@dataclass
class SegEvaluation:
    scores: list[ImageScore]
    test_fold: int
    model_path: Path
    section: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        return float(np.mean([s.dice for s in self.scores]))


def open_session(model_path: Path, threads: int | None = None):
    """The segmenter's ONNX Runtime session, opened as the product opens it."""
    from busdx.inference.models import open_session as product_session

    if not model_path.is_file():
        raise BusdxError(f"no segmenter at {model_path}: run `busdx export segmentation` first")
    return product_session(model_path, threads or 1)


def _input_size(session, default: int = 224) -> int:
    shape = session.get_inputs()[0].shape
    return shape[-1] if isinstance(shape[-1], int) else default


def predict_probability(session, image: np.ndarray, size: int) -> np.ndarray:
    """Lesion probability on the original grid of ``image`` (float32 HxW), as the product
    computes it."""
    from busdx.inference.pipeline import lesion_probability

    return lesion_probability(image, session, size)


def _presence_threshold(model_path: Path) -> float | None:
    """The presence threshold of the release whose segmenter ``model_path`` is, if any."""
    from busdx.evaluation.model_card import load_folder_release

    release = load_folder_release(model_path.parent)
    seg = release.segmenter if release is not None else None
    return (seg.presence_threshold if seg is not None and seg.file == model_path.name
            else None)


def score_records(
    session, records: list[Record], keep: set[str] | None = None, threshold: float = THRESHOLD,
    presence_threshold: float | None = None,
) -> tuple[list[ImageScore], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-image scores; for ids in ``keep`` also (image, truth, predicted mask) for figures.
    With ``presence_threshold`` (the release's presence check) the served mask is empty where
    the check says the image shows no lesion, as the product serves it."""
    from tqdm import tqdm

    from busdx.inference.pipeline import run_segmenter, served_mask
    from busdx.models.contract import PRESENCE_OUTPUT

    size = _input_size(session)
    extra = (PRESENCE_OUTPUT,) if presence_threshold is not None else ()
    scores, kept = [], {}
    for r in tqdm(records, desc="evaluating", leave=False):
        image, truth = load_gray(r.image_path), load_mask(r.mask_path)
        probability, rest = run_segmenter(image, session, size, extra=extra)
        pred = probability > threshold
        post, _ = served_mask(pred, float(rest[0].reshape(-1)[0]) if rest else None,
                              presence_threshold)
        scores.append(ImageScore(r.id, r.scanner, dice(pred, truth), iou(pred, truth),
                                 dice(post, truth), iou(post, truth)))
        if keep is not None and r.id in keep:
            kept[r.id] = (image, truth, pred)
    return scores, kept


def summary_section(
    scores: list[ImageScore], test_fold: int, model_path: Path, split: str = "test",
    threshold: float = THRESHOLD,
) -> dict:
    scanners = [s.scanner for s in scores]
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return {
        "split": split,
        "test_fold": test_fold,
        "images": len(scores),
        "test_images": len(scores) if split == "test" else None,
        "evaluated_at": "original resolution (probability map letterbox-inverted, bilinear, "
                        f"> {threshold:g})",
        "threshold": threshold,
        "dice": summarise(s.dice for s in scores),
        "iou": summarise(s.iou for s in scores),
        "dice_per_scanner": summarise_by_group([s.dice for s in scores], scanners),
        "iou_per_scanner": summarise_by_group([s.iou for s in scores], scanners),
        "postprocessed": {
            "what": "largest connected component, holes filled (as served)",
            "dice": summarise(s.dice_post for s in scores),
            "iou": summarise(s.iou_post for s in scores),
        },
        "onnx_sha256": digest,
        "onnx_megabytes": round(model_path.stat().st_size / 1e6, 2),
    }


def example_ids(scores: list[ImageScore], per_group: int = 2) -> dict[str, list[str]]:
    """Ids of the best, median and worst images by Dice."""
    ranked = sorted(scores, key=lambda s: (s.dice, s.id))
    mid = len(ranked) // 2 - per_group // 2
    return {
        "best": [s.id for s in ranked[::-1][:per_group]],
        "median": [s.id for s in ranked[max(0, mid) : max(0, mid) + per_group]],
        "worst": [s.id for s in ranked[:per_group]],
    }


def plot_examples(
    groups: dict[str, list[str]], kept: dict, scores: list[ImageScore], out_path: Path
) -> Path:
    """A grid: one row per group (best, median, worst), ground truth green, prediction red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {s.id: s for s in scores}
    rows, cols = len(groups), max(len(v) for v in groups.values())
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=110, squeeze=False)
    for row, (name, ids) in enumerate(groups.items()):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(ids):
                continue
            image, truth, pred = kept[ids[col]]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if truth.any():
                ax.contour(truth, levels=[0.5], colors="lime", linewidths=1.2)
            if pred.any():
                ax.contour(pred.astype(np.uint8), levels=[0.5], colors="red", linewidths=1.2)
            s = by_id[ids[col]]
            ax.set_title(f"{name}: {s.id}\nDice {s.dice:.3f}, IoU {s.iou:.3f}", fontsize=8)
    fig.suptitle("Test fold: ground truth (green) and predicted (red) contours", fontsize=9)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def write_scores_csv(scores: list[ImageScore], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "scanner", "dice", "iou", "dice_post", "iou_post"])
        for s in scores:
            writer.writerow([s.id, s.scanner, f"{s.dice:.6f}", f"{s.iou:.6f}",
                             f"{s.dice_post:.6f}", f"{s.iou_post:.6f}"])


def evaluate_segmenter(
    data: str | None,
    model_path: str | Path,
    test_fold: int = 5,
    card_path: str | Path | None = None,
    figures_dir: str | Path | None = None,
    threads: int | None = None,
    split: str = "test",
    threshold: float | None = None,
    split_seed: int = 0,
    val_fold: int | None = None,
) -> SegEvaluation:
    """Score the ONNX segmenter on the official test fold (or, with ``split="val"``, on the
    patient-wise validation split used in training); optionally write the card section
    (``segmenter.test`` or ``segmenter.validation``) and the figure/CSV of per-image results.
    ``threshold``: on the sigmoid; by default the card's ``segmenter.threshold`` (as served)."""
    if split not in ("test", "val"):
        raise BusdxError(f"split must be 'test' or 'val', not {split!r}")
    if threshold is None:
        threshold = card_threshold(card_path)
    model_path = Path(model_path)
    session = open_session(model_path, threads)
    parts = _split(data, test_fold, split_seed, val_fold)
    records = parts.test if split == "test" else parts.val
    if not records:
        raise BusdxError(f"the {split} split of fold {test_fold} has no images")
    presence = _presence_threshold(model_path)
    scores, _ = score_records(session, records, threshold=threshold,
                              presence_threshold=presence)
    section = summary_section(scores, test_fold, model_path, split, threshold)
    if presence is not None:
        section["postprocessed"]["what"] += (
            "; empty where the presence check says the image shows no lesion")
    if split == "val":
        section["validation_split"] = validation_text(len(records), test_fold, split_seed, val_fold)
    if figures_dir is not None:
        figures_dir = Path(figures_dir)
        groups = example_ids(scores)
        wanted = {i for ids in groups.values() for i in ids}
        by_id = {r.id: r for r in records}
        _, kept = score_records(session, [by_id[i] for i in sorted(wanted)], keep=wanted,
                                threshold=threshold)
        tag = "" if split == "test" else "_val"
        plot_examples(groups, kept, scores, figures_dir / f"segmentation{tag}_examples.png")
        write_scores_csv(scores, figures_dir / f"segmentation{tag}_per_image.csv")
        section["examples"] = groups
    if card_path is not None:
        update_card(card_path, "segmenter", {"test" if split == "test" else "validation": section})
    return SegEvaluation(scores=scores, test_fold=test_fold, model_path=model_path,
                         section=section)


def _split(data: str | None, test_fold: int, split_seed: int = 0, val_fold: int | None = None):
    """The split a segmenter was trained on: ``split_seed`` and ``val_fold`` as given to
    ``busdx train segmentation`` (scoring on another validation set would flatter it)."""
    return make_split(load_index(resolve_root(data)),
                      SplitConfig(test_fold=test_fold, seed=split_seed, val_fold=val_fold))


def validation_text(n: int, test_fold: int, split_seed: int = 0, val_fold: int | None = None
                    ) -> str:
    return (f"validation ({n} images, {validation_name(split_seed, val_fold)}, test fold "
            f"{test_fold} untouched)")


def card_threshold(card_path: str | Path | None) -> float:
    """The served mask threshold: the release's segmenter threshold, 0.5 without a release."""
    from busdx.evaluation.model_card import load_folder_release

    release = load_folder_release(card_path) if card_path else None
    if release is None or release.segmenter is None:
        return THRESHOLD
    return release.segmenter.threshold


def sweep_thresholds(
    data: str | None,
    model_path: str | Path,
    thresholds: list[float],
    test_fold: int = 5,
    current: float = THRESHOLD,
    min_gain: float = 0.001,
    threads: int | None = None,
    split_seed: int = 0,
    val_fold: int | None = None,
) -> dict[str, Any]:
    """Mean raw Dice on the VALIDATION split at each mask threshold (one probability map per
    image, thresholded every way). The ``current`` threshold stays unless another beats it by at
    least ``min_gain``, the bar a new graph must clear too. Returns the card's
    ``segmenter.threshold_sweep``; moving ``segmenter.threshold`` is left to the caller."""
    from tqdm import tqdm

    current = round(float(current), 4)
    grid = sorted({round(float(t), 4) for t in [*thresholds, current]})
    if not all(0.0 < t < 1.0 for t in grid):
        raise BusdxError(f"thresholds must lie strictly between 0 and 1, not {grid}")
    model_path = Path(model_path)
    session = open_session(model_path, threads)
    size = _input_size(session)
    records = _split(data, test_fold, split_seed, val_fold).val
    per_threshold: dict[float, list[float]] = {t: [] for t in grid}
    for r in tqdm(records, desc="threshold sweep", leave=False):
        prob = predict_probability(session, load_gray(r.image_path), size)
        truth = load_mask(r.mask_path)
        for t in grid:
            per_threshold[t].append(dice(prob > t, truth))
    means = {t: float(np.mean(v)) for t, v in per_threshold.items()}
    best = max(means, key=lambda t: (means[t], t == current))
    chosen = best if means[best] >= means[current] + min_gain else current
    log.info("threshold sweep on validation: %s; served: %g",
             {f"{t:g}": round(v, 4) for t, v in means.items()}, chosen)
    return {
        "rule": f"highest validation Dice at original resolution; the served threshold "
                f"({current:g}) stays unless beaten by at least {min_gain}",
        "split": validation_text(len(records), test_fold, split_seed, val_fold),
        "onnx_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "val_dice_by_threshold": {f"{t:g}": v for t, v in means.items()},
        "best": best,
        "gain_of_best": means[best] - means[current],
        "previous": current,
        "chosen": chosen,
    }


def select_segmenter(
    data: str | None,
    candidates: dict[str, Path],
    test_fold: int = 5,
    baseline: str | None = None,
    min_gain: float = 0.001,
    not_eligible: dict[str, str] | None = None,
    threads: int | None = None,
    threshold: float = THRESHOLD,
    split_seed: int = 0,
    val_fold: int | None = None,
) -> dict[str, Any]:
    """Score candidate graphs on the VALIDATION split at original resolution and pick one: the
    highest mean Dice, but the ``baseline`` (the graph shipped now) stays unless the best beats
    it by at least ``min_gain``. Graphs in ``not_eligible`` (name -> why: over the latency
    budget, say) are scored and recorded but never chosen. Returns the card's
    ``segmenter.selection``; copying the chosen graph is left to the caller."""
    not_eligible = dict(not_eligible or {})
    unknown = sorted((set(not_eligible) | ({baseline} if baseline else set())) - set(candidates))
    if unknown:
        raise BusdxError(f"not among the candidates: {', '.join(unknown)}")
    if not set(candidates) - set(not_eligible):
        raise BusdxError("every candidate is marked not eligible")
    records = _split(data, test_fold, split_seed, val_fold).val
    dices, post = {}, {}
    for name, path in candidates.items():
        scores, _ = score_records(open_session(Path(path), threads), records, threshold=threshold)
        dices[name] = float(np.mean([s.dice for s in scores]))
        post[name] = float(np.mean([s.dice_post for s in scores]))
        log.info("validation Dice of %s (%s): %.4f (postprocessed %.4f)", name, path, dices[name],
                 post[name])
    eligible = {n: d for n, d in dices.items() if n not in not_eligible}
    best = max(eligible, key=lambda n: (eligible[n], n == baseline))
    chosen = best
    if baseline and baseline in eligible and eligible[best] < eligible[baseline] + min_gain:
        chosen = baseline
    rule = "highest validation Dice at original resolution"
    if baseline:
        rule += f"; the shipped graph ({baseline}) stays unless beaten by at least {min_gain}"
    if not_eligible:
        rule += "; graphs marked not eligible are scored for the record only"
    return {
        "rule": rule,
        "split": validation_text(len(records), test_fold, split_seed, val_fold),
        "candidates": {n: str(p) for n, p in candidates.items()},
        "val_dice_original_resolution": dices,
        "val_dice_postprocessed": post,
        "not_eligible": not_eligible,
        "baseline": baseline,
        "chosen": chosen,
    }
