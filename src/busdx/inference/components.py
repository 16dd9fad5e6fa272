"""Connected components and hole filling of a mask, on OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A {0, 1} uint8 mask's 8-connected labels and each label's pixel count (label 0: the
    background)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask), connectivity=8, ltype=cv2.CV_32S
    )
    return labels, stats[:, cv2.CC_STAT_AREA]


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    """A {0, 1} uint8 array of the mask's foreground (a bool array's own bytes when it can)."""
    mask = np.asarray(mask)
    return np.ascontiguousarray(mask if mask.dtype == bool else mask != 0).view(np.uint8)


def _box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of the foreground's bounding box (None: no foreground)."""
    x, y, w, h = cv2.boundingRect(mask)
    return (slice(y, y + h), slice(x, x + w)) if w else None


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component as uint8 {0, 1} (all zero if none); of
    equal ones, the one met first in row-major order."""
    mask = _as_uint8(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = _box(mask)
    if box is None:
        return out
    # labelling the foreground's bounding box only: the same components, in the same order
    labels, sizes = _components(mask[box])
    largest = 1 + np.flatnonzero(sizes[1:] == sizes[1:].max())
    # OpenCV's numbering need not follow row-major order, so a tie is settled here
    first = [np.argmax(labels.ravel() == label) for label in largest] if len(largest) > 1 else [0]
    out[box] = labels == largest[int(np.argmin(first))]
    return out


def large_components(mask: np.ndarray, share: float) -> np.ndarray:
    """The 8-connected foreground components of at least ``share`` of the largest one's size,
    as a bool mask (all False if none)."""
    labels, sizes = _components(_as_uint8(mask))
    if len(sizes) < 2:
        return np.zeros(labels.shape, dtype=bool)
    keep = sizes >= share * sizes[1:].max()
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the border (4-connected background), as uint8
    {0, 1}."""
    out = _as_uint8(mask).copy()
    box = _box(out)
    if box is None:
        return out
    # Background outside the foreground's bounding box reaches the border, so holes lie inside
    # it; a background frame around the box joins every piece of background that reaches the
    # box's edge, and one flood from a corner marks all that is not a hole.
    framed = np.pad(out[box], 1)
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    out[box] = framed[1:-1, 1:-1] != 2
    return out
