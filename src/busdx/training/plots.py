"""Learning curves of a training run, drawn by training and by `busdx report` (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _metric_label(key: str) -> str:
    name = key.removeprefix("val_")
    name = {"dice": "Dice", "auc": "AUC", "iou": "IoU"}.get(name, name.replace("_", " "))
    return f"validation {name}"


def plot_learning_curves(history: dict, out_path: str | Path, title: str | None = None) -> Path:
    """Training and validation loss per epoch (and validation Dice or any other ``val_*`` metric
    present, on a second axis). ``history`` holds lists keyed ``epoch``, ``train_loss``,
    ``val_loss`` and optionally ``val_dice``/``val_auc``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    epochs = history.get("epoch") or list(range(1, len(history["train_loss"]) + 1))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, history["train_loss"], "o-", label="training loss")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    metrics = [k for k in history if k.startswith("val_") and k != "val_loss" and history[k]]
    if metrics:
        ax2 = ax.twinx()
        for key in metrics:
            line = ax2.plot(epochs, history[key], "^--", color="tab:green",
                            label=_metric_label(key))
            handles += line
            labels.append(line[0].get_label())
        ax2.set_ylabel("validation metric")
    # Losses fall towards the bottom, metrics rise towards the top: the middle stays clear.
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
