"""Figures for the classifier: ROC, confusion matrix, reliability diagram, risk band vs BI-RADS,
learning curves. Matplotlib only (Agg), so they render in the serving install."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(labels, scores, auc: float, ci: tuple[float, float], path: Path,
             operating: tuple[float, float] | None = None,
             title: str = "ROC, test fold (end to end)") -> Path:
    from busdx.evaluation.classification import roc_curve

    plt = _plt()
    fpr, tpr = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if operating is not None:
        ax.plot(*operating, "ro", label="frozen threshold")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(tp: int, fp: int, tn: int, fn: int, path: Path) -> Path:
    plt = _plt()
    table = np.array([[tn, fp], [fn, tp]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(table, cmap="Blues")
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > table.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set(xlabel="predicted", ylabel="biopsy", title="Confusion at the frozen threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(curves: dict, path: Path) -> Path:
    """``curves``: name -> busdx.training.calibration.Reliability."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for name, rel in curves.items():
        used = rel.count > 0
        ax.plot(rel.confidence[used], rel.frequency[used], "o-", label=f"{name} (ECE {rel.ece:.3f})")
    ax.set(xlabel="predicted probability of malignancy", ylabel="observed malignant fraction",
           title="Reliability (15 bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_band_vs_birads(table: dict, path: Path) -> Path:
    plt = _plt()
    counts = np.array(table["counts"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Greens")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=10)
    ax.set_xticks(range(counts.shape[1]), [str(b) for b in table["cols_birads"]])
    ax.set_yticks(range(counts.shape[0]), table["rows_band"])
    ax.set(xlabel="radiologists' BI-RADS", ylabel="risk band (aid)", title="Band vs BI-RADS")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_history(history: Sequence[dict], path: Path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="epoch", ylabel="BCE loss")
    a.legend()
    b.plot(epochs, [h["val_auc"] for h in history], "g")
    b.set(xlabel="epoch", ylabel="validation ROC AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_figures(preds, report, folder: Path, where: str = "test fold",
                 more_reliability: dict | None = None) -> list[Path]:
    """The evaluation's figures for ``preds`` (busdx.evaluation.classification.Prediction);
    ``where`` names the images in the ROC's title; ``more_reliability``: further curves (name ->
    Reliability) for the reliability diagram."""
    from busdx.numeric import sigmoid
    from busdx.training.calibration import calibrate, reliability

    folder.mkdir(parents=True, exist_ok=True)
    y = np.array([p.label for p in preds])
    logits = np.array([p.logit for p in preds])
    probs = calibrate(logits, report.temperature)
    figures = [
        plot_roc(y, probs, report.auc, report.auc_ci95, folder / "classifier_roc.png",
                 operating=(1 - report.specificity, report.sensitivity),
                 title=f"ROC, {where} (" + ("end to end" if report.masks == "predicted"
                                           else f"{report.masks} masks") + ")"),
        plot_confusion(report.tp, report.fp, report.tn, report.fn,
                       folder / "classifier_confusion.png"),
        plot_reliability({"uncalibrated": reliability(sigmoid(logits - report.logit_offset), y),
                          "calibrated": reliability(probs, y), **(more_reliability or {})},
                         folder / "classifier_reliability.png"),
    ]
    if report.birads is not None:
        figures.append(plot_band_vs_birads(report.birads["table"],
                                           folder / "classifier_band_vs_birads.png"))
    return figures
