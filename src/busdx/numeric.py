"""The few numeric functions every layer needs: the logistic function and the ROC AUC.

A leaf module (numpy only), so that data, training, inference and evaluation share one
definition instead of each keeping its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    """The logistic function without overflow for large |x|.

    float32 arrays stay float32 and use the tanh form, 0.5 + 0.5 tanh(x / 2): it cannot overflow
    and costs a quarter of the float64 form, which matters for the segmenter's whole probability
    map. Everything else is computed in float64; a scalar in gives a Python float out.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * x)
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out if out.ndim else float(out)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes")
    # The bootstraps call this thousands of times, hence one unstable sort and no second one.
    # Order within a run of equal scores does not matter (the run shares its midrank), and the
    # ranks are multiples of 1/2, so their sum is exact in any order.
    order = np.argsort(s)
    sorted_s = s[order]
    starts = np.empty(len(s), dtype=bool)
    starts[0] = True
    np.not_equal(sorted_s[1:], sorted_s[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    counts = np.diff(first, append=len(s))
    ranks = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)  # in sorted order
    rank_sum = ranks[y[order] == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
