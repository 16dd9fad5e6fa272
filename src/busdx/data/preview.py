"""``busdx data preview``: images with their mask contours, and the balance of each split, for
BUS-BRA and (``--breast``) BrEaST-Lesions-USG."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from busdx.data.index import load_index
from busdx.data.preprocess import load_gray, load_mask
from busdx.data.splits import SplitConfig, make_split

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def _pick(records, n_images: int, seed: int):
    """Half benign, half malignant, spread over scanners, reproducibly."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in (0, 1):
        pool = [r for r in records if r.label == label]
        order = rng.permutation(len(pool))
        by_scanner: dict[str, list] = {}
        for i in order:
            by_scanner.setdefault(pool[i].scanner, []).append(pool[i])
        want = n_images // 2 if label == 0 else n_images - n_images // 2
        queues = list(by_scanner.values())
        while want and any(queues):
            for q in queues:
                if q and want:
                    picked.append(q.pop(0))
                    want -= 1
    return picked


def _bars(ax, split, key, title: str, order=None) -> None:
    parts = split.parts()
    counts = {name: Counter(key(r) for r in part) for name, part in parts.items()}
    categories = order or sorted({c for cnt in counts.values() for c in cnt})
    width = 0.8 / len(parts)
    x = np.arange(len(categories))
    for i, (name, cnt) in enumerate(counts.items()):
        total = max(sum(cnt.values()), 1)
        share = [100.0 * cnt.get(c, 0) / total for c in categories]
        ax.bar(x + (i - 1) * width, share, width, label=f"{name} (n={total})",
               color=SPLIT_COLOURS[name])
    ax.set_xticks(x, [str(c) for c in categories], fontsize=8)
    ax.set_ylabel("% of split")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _short_scanner(name: str) -> str:
    return name.split("@")[0].strip()


def preview(data, out: str | Path, split_config: SplitConfig | None = None,
            n_images: int = 12, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = load_index(data)
    split = make_split(index, split_config)
    picked = _pick(index.records, n_images, seed)
    cols = 6
    rows = int(np.ceil(len(picked) / cols))
    fig = plt.figure(figsize=(3 * cols, 3.1 * rows + 3.4))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.1] * rows + [3.4])
    fold_of = {r.id: name for name, part in split.parts().items() for r in part}
    for i, record in enumerate(picked):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        image, mask = load_gray(record.image_path), load_mask(record.mask_path)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        colour = "#e0443e" if record.label else "#3ec1e0"
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(f"{record.id} · {record.pathology}\nBI-RADS {record.birads} · "
                     f"{_short_scanner(record.scanner)} · {fold_of.get(record.id, '?')}",
                     fontsize=8, color=colour)
        ax.axis("off")
    bottom = grid[rows, :].subgridspec(1, 3, wspace=0.3)
    _bars(fig.add_subplot(bottom[0]), split, lambda r: r.pathology, "Pathology",
          ["benign", "malignant"])
    _bars(fig.add_subplot(bottom[1]), split, lambda r: r.birads, "BI-RADS", [2, 3, 4, 5])
    _bars(fig.add_subplot(bottom[2]), split, lambda r: _short_scanner(r.scanner), "Scanner")
    fig.suptitle(f"BUS-BRA: {len(index)} images, {len(index.patients)} patients; "
                 f"test = fold {split.test_fold} ({split.source}); contours = lesion masks",
                 fontsize=12)
    return _save(fig, out)


def preview_breast(root, out: str | Path, n_images: int = 12, seed: int = 0) -> Path:
    """BrEaST-Lesions-USG: whole scans with their lesion contours (normal scans too), and how
    its patient-wise halves (busdx.data.sites: dev, test) balance pathology and BI-RADS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from busdx.data.sites import read_breast

    records = read_breast(root)
    normal = [r for r in records if r.label is None]
    picked = normal[:2] + _pick([r for r in records if r.label is not None],
                                n_images - min(2, len(normal)), seed)
    cols = 6
    rows = int(np.ceil(len(picked) / cols))
    fig = plt.figure(figsize=(3 * cols, 3.1 * rows + 3.4))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.1] * rows + [3.4])
    for i, record in enumerate(picked):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(load_gray(record.image_path), cmap="gray", vmin=0, vmax=1)
        colour = {1: "#e0443e", 0: "#3ec1e0"}.get(record.label, "#7ad151")
        if record.mask_path is not None:
            ax.contour(load_mask(record.mask_path), levels=[0.5], colors=[colour],
                       linewidths=1.2)
        ax.set_title(f"{record.id} · {record.pathology}\nBI-RADS {record.birads or '-'} · "
                     f"{record.split}", fontsize=8, color=colour)
        ax.axis("off")
    bottom = grid[rows, :].subgridspec(1, 2, wspace=0.3)
    halves = {name: [r for r in records if r.split == name] for name in ("dev", "test")}
    colours = {"dev": SPLIT_COLOURS["train"], "test": SPLIT_COLOURS["test"]}
    for ax, (title, key) in zip([fig.add_subplot(b) for b in bottom],
                                (("Pathology", lambda r: r.pathology),
                                 ("BI-RADS", lambda r: r.birads or "-")), strict=True):
        categories = sorted({key(r) for r in records})
        x = np.arange(len(categories))
        for j, (name, part) in enumerate(halves.items()):
            counts = Counter(key(r) for r in part)
            share = [100.0 * counts.get(c, 0) / max(len(part), 1) for c in categories]
            ax.bar(x + (j - 0.5) * 0.4, share, 0.4, label=f"{name} (n={len(part)})",
                   color=colours[name])
        ax.set_xticks(x, [str(c) for c in categories], fontsize=8)
        ax.set_ylabel("% of half")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"BrEaST-Lesions-USG: {len(records)} whole scans; halves split by patient "
                 "(dev may be trained on, test never); contours = lesion masks", fontsize=12)
    return _save(fig, out)
