"""Lesion-free windows: the part of an image that keeps clear of its lesion.

From an image with a lesion mask, the largest of the four strips beside the lesion's bounding
box grown by a quarter of its size on every side (above, below, left or right of it, each
spanning the image the other way), kept when both of its sides are at least 40% of the image's.
Training shows such windows with empty masks, so that the segmenter learns to find nothing;
evaluation analyses them to measure how often the product says "no lesion" when there is none.
docs/generalisation_plan.md fixed this definition before any result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROW = 0.25  # of the lesion box's size, on every side
MIN_SIDE = 0.40  # of the image's side, for both sides of a window


@dataclass(frozen=True)
class Window:
    top: int
    left: int
    bottom: int
    right: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        return image[self.top:self.bottom, self.left:self.right]


def lesion_free_cut(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The image's lesion-free window as an array of its own, or None when the mask does not
    fit the image or no window is large enough."""
    window = lesion_free_window(mask) if mask.shape == image.shape else None
    return None if window is None else np.ascontiguousarray(window.cut(image))


def lesion_free_window(mask: np.ndarray) -> Window | None:
    """The largest of the four strips beside the grown lesion box (above, below, left, right of
    it, each spanning the image the other way), or None when none is large enough."""
    fits = lesion_free_windows(mask)
    return max(fits, key=lambda s: (s.bottom - s.top) * (s.right - s.left)) if fits else None


def lesion_free_windows(mask: np.ndarray) -> list[Window]:
    """Every strip beside the grown lesion box that is large enough (at most four)."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return []
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    gh, gw = GROW * (bottom - top), GROW * (right - left)
    top, bottom = int(max(0, np.floor(top - gh))), int(min(h, np.ceil(bottom + gh)))
    left, right = int(max(0, np.floor(left - gw))), int(min(w, np.ceil(right + gw)))
    strips = [Window(0, 0, top, w), Window(bottom, 0, h, w), Window(0, 0, h, left),
              Window(0, right, h, w)]
    return [s for s in strips
            if s.bottom - s.top >= MIN_SIDE * h and s.right - s.left >= MIN_SIDE * w]


def lesion_window_cut(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """A cut of the image of the same size as its lesion-free window, placed over the lesion
    (centred on it, moved inside the image), as an array of its own; None when the image has no
    lesion-free window or the lesion, grown as for the window, does not fit in that size. It
    shows a lesion at the scale of a window, so that a check learning "lesion" against
    "lesion-free window" cannot go by the scale and framing alone."""
    window = lesion_free_window(mask) if mask.shape == image.shape else None
    if window is None:
        return None
    h, w = mask.shape
    wh, ww = window.bottom - window.top, window.right - window.left
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    gh, gw = GROW * (bottom - top), GROW * (right - left)
    if bottom - top + 2 * gh > wh or right - left + 2 * gw > ww:
        return None
    y = int(min(max(0, round((top + bottom - wh) / 2)), h - wh))
    x = int(min(max(0, round((left + right - ww) / 2)), w - ww))
    return np.ascontiguousarray(image[y:y + wh, x:x + ww])
