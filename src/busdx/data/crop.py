"""The lesion crop the classifier sees, shared by training (ground-truth masks, with jitter) and
inference (the segmenter's mask).

The crop is the square around the mask's bounding box, enlarged by ``context`` of the box's
longer side on every side, so the classifier sees the lesion's margin and the tissue around it
(posterior shadowing, the surrounding echo pattern). Parts of the square outside the image are
black. Without a lesion the whole image is used, letterboxed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busdx.data.preprocess import Letterbox, resize, resize_input


@dataclass(frozen=True)
class CropConfig:
    size: int = 224
    context: float = 0.3
    min_side: int = 32  # pixels of the original image; tiny boxes are grown to this


@dataclass(frozen=True)
class CropBox:
    """A square window in original pixel coordinates (may extend past the image)."""

    top: int
    left: int
    side: int

    def extract(self, image: np.ndarray, size: int) -> np.ndarray:
        h, w = image.shape
        out = np.zeros((self.side, self.side), dtype=np.float32)
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, h), min(self.left + self.side, w)
        if y1 > y0 and x1 > x0:
            out[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left] = image[y0:y1, x0:x1]
        return np.clip(resize_input(out, size, size), 0.0, 1.0)

    def paste(self, array: np.ndarray, height: int, width: int) -> np.ndarray:
        """Map a map over the crop (any square size) back onto an ``height`` x ``width`` grid."""
        full = np.zeros((height, width), dtype=np.float32)
        patch = resize(array.astype(np.float32), self.side, self.side, nearest=False)
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, height), min(self.left + self.side, width)
        if y1 > y0 and x1 > x0:
            full[y0:y1, x0:x1] = patch[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left]
        return full


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the foreground, bottom/right exclusive; None if empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    top, bottom = np.flatnonzero(rows)[[0, -1]]
    left, right = np.flatnonzero(cols)[[0, -1]]
    return int(top), int(left), int(bottom) + 1, int(right) + 1


def crop_box(
    mask: np.ndarray,
    config: CropConfig = CropConfig(),
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> CropBox | None:
    """The square crop window for ``mask``; ``jitter`` randomly moves and scales it (training)."""
    box = mask_bbox(mask)
    if box is None:
        return None
    top, left, bottom, right = box
    cy, cx = (top + bottom) / 2, (left + right) / 2
    side = max(bottom - top, right - left) * (1 + 2 * config.context)
    if rng is not None and jitter > 0:
        side *= float(np.exp(rng.uniform(-jitter, jitter)))
        cy += rng.uniform(-jitter, jitter) * side / 2
        cx += rng.uniform(-jitter, jitter) * side / 2
    side = max(int(round(side)), config.min_side)
    return CropBox(top=int(round(cy - side / 2)), left=int(round(cx - side / 2)), side=side)


def lesion_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    config: CropConfig = CropConfig(),
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> tuple[np.ndarray, CropBox | None]:
    """The classifier's input (size x size float32) and its window (None: whole image used)."""
    box = crop_box(mask, config, rng, jitter) if mask is not None else None
    if box is None:
        return np.clip(Letterbox(*image.shape, config.size).apply(image), 0.0, 1.0), None
    return box.extract(image, config.size), box
