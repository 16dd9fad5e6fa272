"""Calibration (temperature scaling), calibration error and the operating threshold.

Numpy only, so that the serving install can apply and check what training fitted. Everything
here is fitted on the validation set; the test fold only ever gets the frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busdx.numeric import sigmoid

T_BOUNDS = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    # log(1 + e^-z) for y=1, log(1 + e^z) for y=0, stably.
    return float(np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The temperature T > 0 minimising the NLL of sigmoid(logit / T) (golden-section on log T;
    the NLL is unimodal in log T for a fixed set of logits)."""
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def calibrate(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probability of malignancy."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


@dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, accuracy (fraction malignant) and count (equal-width bins)."""

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        used = self.count > 0
        gaps = np.abs(self.confidence[used] - self.frequency[used])
        return float((self.count[used] * gaps).sum() / max(n, 1))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Reliability:
    """Bins of the predicted probability of malignancy vs the observed malignant fraction."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    conf = np.bincount(idx, weights=probs, minlength=n_bins)
    freq = np.bincount(idx, weights=labels, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, conf / count, np.nan)
        freq = np.where(count > 0, freq / count, np.nan)
    return Reliability(edges, conf, freq, count.astype(int))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |confidence - frequency| over equal-width bins, where the
    confidence is the predicted probability of malignancy (binary reliability)."""
    return reliability(probs, labels, n_bins).ece


def sensitivity_threshold(probs: np.ndarray, labels: np.ndarray, target: float = 0.90) -> float:
    """The most specific threshold t such that calling ``prob >= t`` malignant keeps the
    sensitivity at or above ``target``, placed midway in its gap.

    Every t in (the next lower probability, the k-th highest malignant probability] gives the
    same counts. The top of that gap would put one validation cancer exactly on the threshold,
    where a difference in the last bits (another code path, another machine) flips its call; the
    midpoint keeps the counts and leaves every validation image clear of the edge."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    pos = np.sort(probs[labels == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no malignant cases: cannot set a sensitivity threshold")
    # With t = the k-th highest malignant probability, at least k positives are caught.
    k = int(np.ceil(target * len(pos)))
    top = float(pos[max(k, 1) - 1])
    below = probs[probs < top]
    if len(below) == 0:
        return top
    low = float(below.max())
    middle = (top + low) / 2.0
    # two probabilities a float's last bit apart have no midpoint between them: the top of the
    # gap then keeps the counts, where the rounded midpoint would fall on the lower case
    return middle if low < middle < top else top


def threshold_rule(target: float) -> str:
    """The card's words for :func:`sensitivity_threshold`."""
    return (f"most specific threshold with validation sensitivity >= {target}, midway between "
            "the last cancer kept and the next lower validation probability")


def fit_platt(logits: np.ndarray, labels: np.ndarray, iterations: int = 100,
              l2: float = 1e-6) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the NLL of sigmoid(a * logit + b) (Newton's method).

    A class-weighted loss shifts every logit by about log(pos_weight), which a temperature alone
    cannot undo; Platt's intercept can. Since sigmoid(a z + b) = sigmoid((z + b/a) / (1/a)), the
    pair is shipped as a temperature T = 1/a once b/a is folded into the exported model's bias
    (see busdx.models.classification.export_onnx's ``logit_offset``).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    x = np.stack([z, np.ones_like(z)], axis=1)

    def loss(w: np.ndarray) -> float:
        return nll(x @ w, y) + 0.5 * l2 * float(w @ w)

    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) / len(y) + l2 * w
        hess = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # a full Newton step from the identity can overshoot when the scores rank badly
        # (a slope of the other sign): halve it until the loss goes down
        scale, current = 1.0, loss(w)
        while scale > 1e-6 and loss(w - scale * step) > current:
            scale /= 2.0
        w = w - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])
