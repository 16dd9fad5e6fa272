"""Overlap metrics for binary masks (numpy only, so evaluation runs from the serving install)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard); 1.0 when both masks are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union


def summarise(values: Iterable[float]) -> dict[str, float]:
    """Mean, standard deviation (population), median, min and count of per-image scores."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "n": int(v.size),
    }


def summarise_by_group(
    values: Sequence[float], groups: Sequence[str]
) -> dict[str, dict[str, float]]:
    """:func:`summarise` for each group (for instance each scanner)."""
    out: dict[str, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        out.setdefault(group, []).append(value)
    return {g: summarise(v) for g, v in sorted(out.items())}
