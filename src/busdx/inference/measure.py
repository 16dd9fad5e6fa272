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

import cv2
import numpy as np

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


def border(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask (outside the image counts)."""
    mask = np.asarray(mask, dtype=np.uint8)
    inner = cv2.erode(mask, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (mask > inner).astype(bool)


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
# scikit-image's perimeter: each border pixel's code sums its border neighbours' weights, and
# the code says whether it is a straight (1), diagonal (sqrt 2) or corner ((1 + sqrt 2) / 2) step
_CODE_KERNEL = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]], dtype=np.float32)
_STEP_LENGTH = np.zeros(50, dtype=np.float64)
_STEP_LENGTH[[5, 7, 15, 17, 25, 27]] = 1.0
_STEP_LENGTH[[21, 33]] = math.sqrt(2.0)
_STEP_LENGTH[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def perimeter_px(mask: np.ndarray) -> float:
    """Border length in pixels (scikit-image's 4-connectivity weighting)."""
    edge = border(mask).astype(np.float32)
    codes = cv2.filter2D(edge, -1, _CODE_KERNEL, borderType=cv2.BORDER_CONSTANT)
    return float(_STEP_LENGTH[np.rint(codes).astype(np.intp)].sum())


def _corner_hull(mask: np.ndarray) -> np.ndarray:
    """Convex hull (x, y) of the mask's pixel corners, not centres: a one-pixel lesion is 1 px
    across. The outer contours' pixels carry every corner the hull can touch."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    centres = np.concatenate(contours).reshape(-1, 1, 2)
    corners = (centres + np.array([[0, 0], [1, 0], [0, 1], [1, 1]])).reshape(-1, 2)
    return cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _max_feret(hull: np.ndarray) -> float:
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _ellipse(mask: np.ndarray) -> tuple[float, float, float]:
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]) / m["m00"]
    # A pixel is a unit square, not a point: its own variance (1/12) keeps thin shapes finite.
    values, vectors = np.linalg.eigh(cov + np.eye(2) / 12.0)
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
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT), step


def measure(mask: np.ndarray, pixel_spacing_mm: tuple[float, float] | None = None) -> Measurements:
    """Measurements of a non-empty binary mask (one lesion)."""
    mask = np.asarray(mask)
    if mask.dtype not in (np.uint8, np.bool_):
        mask = mask != 0
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))  # any non-zero
    if w == 0:
        raise ValueError("cannot measure an empty mask")
    # Work on the lesion's box, not the image; the margin of one pixel sets where resampling
    # to square pixels samples, as it always has.
    mask = np.pad((mask[y : y + h, x : x + w] != 0).view(np.uint8), 1)
    area_px = cv2.countNonZero(mask)
    if pixel_spacing_mm is None:
        units, iso, step, pixel_area = "px", mask, 1.0, 1.0
    else:
        units = "mm"
        iso, step = _isotropic(mask, pixel_spacing_mm)
        pixel_area = pixel_spacing_mm[0] * pixel_spacing_mm[1]
    area = area_px * pixel_area
    perimeter = perimeter_px(iso) * step
    hull = _corner_hull(iso)
    _, _, w, h = cv2.boundingRect(iso)
    width, height = float(w) * step, float(h) * step
    major, minor, angle = _ellipse(iso)
    hull_area = cv2.contourArea(hull.astype(np.float32)) * step * step
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
