"""Connected components and hole filling of a mask, on OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels and each label's pixel count (label 0 is the background)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.asarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    return labels, stats[:, cv2.CC_STAT_AREA]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component as uint8 {0, 1} (all zero if none); of
    equal ones, the one met first in row-major order."""
    labels, sizes = _components(np.asarray(mask, dtype=bool))
    if len(sizes) < 2:
        return np.zeros(labels.shape, dtype=np.uint8)
    best = 1 + np.flatnonzero(sizes[1:] == sizes[1:].max())
    if len(best) > 1:  # OpenCV's numbering need not follow row-major order: ties are settled here
        flat = labels.ravel()
        best = best[np.argmin([np.argmax(flat == label) for label in best])]
    return (labels == int(np.atleast_1d(best)[0])).astype(np.uint8)


def large_components(mask: np.ndarray, share: float) -> np.ndarray:
    """The 8-connected foreground components of at least ``share`` of the largest one's size,
    as a bool mask (all False if none)."""
    labels, sizes = _components(np.asarray(mask, dtype=bool))
    if len(sizes) < 2:
        return np.zeros(labels.shape, dtype=bool)
    keep = sizes >= share * sizes[1:].max()
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the border (4-connected background), as uint8
    {0, 1}."""
    # A background frame around the mask joins every piece of background that touches the
    # border, so one flood from a corner marks all that is not a hole.
    framed = np.pad(np.asarray(mask, dtype=bool).astype(np.uint8), 1)
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return (framed[1:-1, 1:-1] != 2).astype(np.uint8)
