"""Measurements of a lesion mask: size, shape and orientation.

Lengths are in millimetres when the pixel size is known (DICOM calibration) and in pixels
otherwise; ``units`` says which, and areas are in ``units`` squared. A mask with unequal row and
column spacing is first resampled to square pixels so every length is measured in one unit.

- area: pixel count times the pixel area.
- perimeter: length of the outer border, with the weights of scikit-image's ``perimeter``
  (straight, diagonal and corner border pixels) so a digital disk is not over-counted.
- longest_diameter: the maximum Feret diameter (largest distance across the lesion, measured
  over the pixel corners of its convex hull).
- width, height: extent of the bounding box along the image's x (skin line) and y axes.
- orientation: "parallel" when the lesion is wider than tall (BI-RADS: long axis parallel to the
  skin), else "not parallel".
- circularity: 4 pi area / perimeter^2 (1 for a disk, lower for irregular margins), capped at 1.
- solidity: area / convex hull area (lower for lobulated or spiculated margins).
- ellipse_*: the ellipse with the same second moments: full major and minor axis lengths and
  the major axis angle in degrees from the horizontal, counter-clockwise as displayed, in [0, 180).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

ISOTROPY_TOLERANCE = 0.01


@dataclass(frozen=True)
class Measurements:
    units: str  # "mm" or "px"
    area: float
    perimeter: float
    longest_diameter: float
    width: float
    height: float
    orientation: str  # "parallel" or "not parallel"
    circularity: float
    solidity: float
    ellipse_major: float
    ellipse_minor: float
    ellipse_angle_deg: float
    area_px: int

    def as_dict(self) -> dict:
        return asdict(self)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """mask moved by (dy, dx) with zeros shifted in."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def border(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask."""
    mask = mask.astype(bool)
    inner = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        inner &= _shift(mask, dy, dx)
    return mask & ~inner


def perimeter_px(mask: np.ndarray) -> float:
    """Border length in pixels (scikit-image's 4-connectivity weighting)."""
    edge = np.pad(border(mask), 1).astype(np.int32)
    kernel = ((10, 2, 10), (2, 1, 2), (10, 2, 10))
    codes = np.zeros_like(edge)
    for i, row in enumerate(kernel):
        for j, weight in enumerate(row):
            codes += weight * _shift(edge, 1 - i, 1 - j)
    weights = np.zeros(50, dtype=np.float64)
    weights[[5, 7, 15, 17, 25, 27]] = 1.0
    weights[[21, 33]] = math.sqrt(2.0)
    weights[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0
    return float(weights[np.clip(codes, 0, 49)].sum())


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain) of Nx2 points, counter-clockwise."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _extreme_corners(mask: np.ndarray) -> np.ndarray:
    """Pixel corners (x, y) of the first and last pixel of every row: enough for the hull."""
    ys = np.flatnonzero(mask.any(axis=1))
    first = mask[ys].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[ys, ::-1].argmax(axis=1)
    corners = [
        np.stack([first, ys], 1),
        np.stack([first, ys + 1], 1),
        np.stack([last + 1, ys], 1),
        np.stack([last + 1, ys + 1], 1),
    ]
    return np.concatenate(corners).astype(np.float64)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _max_feret(hull: np.ndarray) -> float:
    if len(hull) < 2:
        return 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _ellipse(mask: np.ndarray) -> tuple[float, float, float]:
    ys, xs = np.nonzero(mask)
    # A pixel is a unit square, not a point: its own variance (1/12) keeps thin shapes finite.
    cov = np.cov(np.stack([xs, ys]).astype(np.float64), bias=True) if len(xs) > 1 else np.zeros(
        (2, 2)
    )
    cov = cov + np.eye(2) / 12.0
    values, vectors = np.linalg.eigh(cov)
    minor, major = (4.0 * math.sqrt(max(v, 0.0)) for v in values)
    vx, vy = vectors[:, 1]
    angle = math.degrees(math.atan2(-vy, vx)) % 180.0  # y grows downwards in an image
    return major, minor, angle


def _isotropic(mask: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, float]:
    """The mask on square pixels of the finer spacing, and that spacing."""
    dy, dx = spacing
    if abs(dy - dx) <= ISOTROPY_TOLERANCE * max(dy, dx):
        return mask, (dy + dx) / 2.0
    step = min(dy, dx)
    h, w = mask.shape
    size = (max(1, round(w * dx / step)), max(1, round(h * dy / step)))
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return (np.asarray(img) > 127).astype(np.uint8), step


def measure(mask: np.ndarray, pixel_spacing_mm: tuple[float, float] | None = None) -> Measurements:
    """Measurements of a non-empty binary mask (one lesion)."""
    mask = np.asarray(mask).astype(bool)
    area_px = int(mask.sum())
    if area_px == 0:
        raise ValueError("cannot measure an empty mask")
    # Work on the lesion's bounding box (plus a margin for the border tests), not the image.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    if pixel_spacing_mm is None:
        units, iso, step, pixel_area = "px", mask, 1.0, 1.0
    else:
        units = "mm"
        iso, step = _isotropic(mask, pixel_spacing_mm)
        iso = iso.astype(bool)
        pixel_area = pixel_spacing_mm[0] * pixel_spacing_mm[1]
    area = area_px * pixel_area
    perimeter = perimeter_px(iso) * step
    hull = _hull(_extreme_corners(iso))
    rows, cols = np.flatnonzero(iso.any(axis=1)), np.flatnonzero(iso.any(axis=0))
    width = float(cols[-1] - cols[0] + 1) * step
    height = float(rows[-1] - rows[0] + 1) * step
    major, minor, angle = _ellipse(iso)
    hull_area = _polygon_area(hull) * step * step if len(hull) >= 3 else area
    return Measurements(
        units=units,
        area=float(area),
        perimeter=float(perimeter),
        longest_diameter=_max_feret(hull) * step,
        width=width,
        height=height,
        orientation="parallel" if width > height else "not parallel",
        circularity=min(1.0, 4.0 * math.pi * area / perimeter**2) if perimeter > 0 else 1.0,
        solidity=min(1.0, area / hull_area) if hull_area > 0 else 1.0,
        ellipse_major=major * step,
        ellipse_minor=minor * step,
        ellipse_angle_deg=angle,
        area_px=area_px,
    )
