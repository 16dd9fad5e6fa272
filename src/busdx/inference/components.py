"""Connected components without scipy (not in the serving set): union-find over row runs.

A mask row holds few runs of foreground, so labelling runs rather than pixels keeps the Python
loop short (a few thousand runs for a noisy 600x500 mask).
"""

from __future__ import annotations

import numpy as np


def _row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def label_runs(mask: np.ndarray, connectivity: int = 8):
    """Runs as (row, start, end) and the root label of each run."""
    reach = 1 if connectivity == 8 else 0  # 8-connectivity also joins diagonal neighbours
    runs: list[tuple[int, int, int]] = []
    parent: list[int] = []
    previous: list[int] = []  # indices of the runs of the previous row
    for y in range(mask.shape[0]):
        current = []
        j = 0
        for start, end in _row_runs(mask[y]):
            index = len(runs)
            runs.append((y, start, end))
            parent.append(index)
            current.append(index)
            # Runs of the previous row are sorted; skip those ending before this one can touch.
            while j < len(previous) and runs[previous[j]][2] + reach <= start:
                j += 1
            k = j
            while k < len(previous) and runs[previous[k]][1] < end + reach:
                a, b = _find(parent, index), _find(parent, previous[k])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
        previous = current
    roots = [_find(parent, i) for i in range(len(runs))]
    return runs, roots


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component as uint8 {0, 1} (all zero if none)."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.uint8)
    runs, roots = label_runs(mask, 8)
    if not runs:
        return out
    sizes: dict[int, int] = {}
    for (_, start, end), root in zip(runs, roots, strict=True):
        sizes[root] = sizes.get(root, 0) + end - start
    best = max(sizes, key=lambda r: (sizes[r], -r))
    for (y, start, end), root in zip(runs, roots, strict=True):
        if root == best:
            out[y, start:end] = 1
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the border (4-connected background)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(~mask, 1, constant_values=True)  # the frame joins all border background
    runs, roots = label_runs(padded, 4)
    outside = roots[0] if runs else -1  # the first run is the top frame row
    filled = np.ones(padded.shape, dtype=np.uint8)
    for (y, start, end), root in zip(runs, roots, strict=True):
        if root == outside:
            filled[y, start:end] = 0
    return filled[1:-1, 1:-1]
