"""Is this image like the images the models were trained on?

The robustness study (studies/robustness.py) shows that blur, lower resolution, speckle and
gain changes that other scanners and exports make move the calls at the frozen threshold far
more than they move the AUC: the operating point, validated on BUS-BRA, may not hold on an
image unlike BUS-BRA's. Three statistics of the scan area (pixels above a near-black level, so
the letterbox-like black margins of a screen capture do not count) say how unlike:

- ``brightness``: its mean gray level (the scanner's gain);
- ``contrast``: its standard deviation (the dynamic range);
- ``texture``: the mean absolute Laplacian, the energy of the finest detail; blur, smoothing
  and up-sampling lower it, added noise raises it. It is taken on the image shrunk, when larger,
  to a long side of ``texture_long_side`` pixels (the card's, fitted as the training images'
  median long side): at the file's own resolution a scanner that samples the same anatomy
  with twice BUS-BRA's pixels reads as blurred, though the networks, which work at 224 pixels,
  call its images as they call BUS-BRA's (validation images up-sampled 1.5x and 2x keep
  their AUC and flip fewer calls than a mirror does, yet at the file's resolution most of them
  were warned). Cards without the key were fitted at the file's resolution and are checked that
  way.

Each is compared with the range the training images span (``fit_ranges``: by default their
0.5th to 99.5th percentiles), kept in the model card's ``input_check`` section. An image
outside a range gets a warning, never a refusal: the user decides.

A fourth check needs no fitting: every training image is grey B-mode (BUS-BRA's 1,875 are
8-bit grey), so colour painted over the scan (a colour or power Doppler box, an elastography
map) is something the networks never saw, and turned into grey it reads as tissue.
``colour_mask`` marks the pixels whose channels differ by more than ``CHROMA`` of the full
scale (JPEG's chroma noise on a grey image stays well below it) and by more than
``SATURATION`` of their brightest channel: overlays paint saturated hues, while a grey map
tinted sepia or blue, as some scanners show B-mode, keeps every pixel pale and turns into a
plain grey image (studies/colour_overlays.py measures both). More than ``COLOUR_SHARE`` of the
scan in colour gets a warning. Thin colour (colour flow) is also filled in from the grey
around it before the analysis (``fill_thin_colour``, rule Y in docs/selection_rules.md); solid colour
(an elastography map blended over the lesion) is not, since a fill would erase what it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from busdx.data.preprocess import integer_scale

STATISTICS = ("brightness", "contrast", "texture")
# a pixel is in colour when its channels differ by more than this share of the full scale ...
CHROMA = 0.2
# ... and by more than this share of its brightest channel (a tinted grey map stays below)
SATURATION = 0.5
# more than this share of the scan's pixels in colour gets a warning (coloured calipers or a
# coloured label inside the scan cover less)
COLOUR_SHARE = 0.01
# the fill (rule Y): each colour pixel takes the mean of the grey pixels in this window ...
FILL_WINDOW = 11
# ... when at least FILL_THIN of the colour pixels have at least FILL_SUPPORT of their window grey
FILL_SUPPORT = 0.3
FILL_THIN = 0.9
# gray level below which a pixel is background (black margins, not tissue)
BACKGROUND = 0.02
PERCENTILES = (0.5, 99.5)
# what each statistic measures, for the model card
DESCRIPTIONS = {
    "brightness": f"mean gray level of the scan area (pixels above {BACKGROUND})",
    "contrast": "standard deviation of the scan area's gray levels",
    "texture": "mean absolute 4-neighbour Laplacian over the scan area, on the image shrunk "
               "to the training images' median long side when larger (blur and up-sampling "
               "lower it, noise raises it)",
}

# what a value below / above the training range suggests, for the warning
_HINTS = {
    "brightness": ("darker than", "brighter than"),
    "contrast": ("lower in contrast than", "higher in contrast than"),
    "texture": ("smoother (blurred, smoothed or up-sampled?) than",
                "grainier (noise or sharpening?) than"),
}


def shrink_to(image: np.ndarray, long_side: int | None) -> np.ndarray:
    """``image`` averaged down to a long side of ``long_side`` pixels when larger (a box filter:
    each pixel the mean of the area it covers, which keeps more fine detail than a bilinear
    filter); unchanged when smaller or when ``long_side`` is None: never up-sampled, which
    would smooth it."""
    h, w = image.shape
    if long_side is None or max(h, w) <= long_side:
        return image
    from PIL import Image

    k = long_side / max(h, w)
    size = (max(3, round(w * k)), max(3, round(h * k)))
    small = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(small.resize(size, Image.Resampling.BOX), dtype=np.float32)


_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float32)


def _texture(x: np.ndarray) -> float:
    lap = np.abs(cv2.filter2D(x, -1, _LAPLACIAN, borderType=cv2.BORDER_CONSTANT))
    area = (x > BACKGROUND).astype(np.uint8)
    area[[0, -1], :] = area[:, [0, -1]] = 0  # the border's pixels lack a neighbour
    return float(cv2.mean(lap, mask=area)[0])


def image_statistics(image: np.ndarray, texture_long_side: int | None = None
                     ) -> dict[str, float]:
    """``image``: float gray levels in [0, 1] at the file's resolution; ``texture_long_side``:
    see the module's docstring (None: texture at the file's resolution)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2 or min(x.shape) < 3:
        raise ValueError(f"a 2-D image of at least 3 x 3 pixels is needed, not {x.shape}")
    area = (x > BACKGROUND).astype(np.uint8)
    if not area.any():
        return {"brightness": 0.0, "contrast": 0.0, "texture": 0.0}
    mean, std = cv2.meanStdDev(x, mask=area)
    return {"brightness": float(mean[0, 0]), "contrast": float(std[0, 0]),
            "texture": _texture(shrink_to(x, texture_long_side))}


# An image is blank when fewer than BLANK_SHARE of its pixels differ from its median grey level
# by more than BLANK_LEVEL: an all-black, all-white or all-grey picture, or one whose only
# content is a few characters of text. Every BUS-BRA and BrEaST-Lesions-USG scan has far more
# (the full-data tier checks it), and a network's call on such an image means nothing.
BLANK_LEVEL = 4 / 255
BLANK_SHARE = 0.01


def is_blank(image: np.ndarray) -> bool:
    """Whether ``image`` (float grey levels in [0, 1]) is blank (see BLANK_SHARE)."""
    x = np.asarray(image, dtype=np.float32)[::2, ::2]  # every fourth pixel decides as well
    return float(np.mean(np.abs(x - np.median(x)) > BLANK_LEVEL)) < BLANK_SHARE


def fit_long_side(shapes: Iterable[tuple[int, int]]) -> int:
    """The median long side of the training images, the scale the texture is compared at."""
    sides = [max(int(h), int(w)) for h, w in shapes]
    if not sides:
        raise ValueError("no images to fit the long side on")
    return int(round(float(np.median(sides))))


def fit_ranges(
    statistics: Iterable[Mapping[str, float]], percentiles: tuple[float, float] = PERCENTILES
) -> dict[str, list[float]]:
    """Each statistic's range over ``statistics`` (one mapping per training image)."""
    rows = list(statistics)
    if not rows:
        raise ValueError("no images to fit the ranges on")
    lo, hi = percentiles
    return {name: [float(np.percentile([r[name] for r in rows], lo)),
                   float(np.percentile([r[name] for r in rows], hi))] for name in STATISTICS}


def colour_mask(array: np.ndarray) -> np.ndarray | None:
    """The pixels of an RGB or RGBA array (integer or float in [0, 1]) whose channels differ by
    more than ``CHROMA`` of the full scale and ``SATURATION`` of their brightest channel; None
    for a grey array or one without such pixels."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return None
    r, g, b = array[..., 0], array[..., 1], array[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):  # grey stored as colour: the usual case
        return None
    # the scale to_gray_float divides by
    full = integer_scale(array[..., :3]) if np.issubdtype(array.dtype, np.integer) else 1.0
    # channel by channel: much faster than max/min over the last axis of an HxWx3 array
    peak = np.maximum(np.maximum(r, g), b).astype(np.float32)
    chroma = peak - np.minimum(np.minimum(r, g), b)
    mask = (chroma > CHROMA * full) & (chroma > SATURATION * peak)
    return mask if mask.any() else None


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """The mean of each ``size`` x ``size`` window (edges repeated), in float64."""
    return cv2.boxFilter(x.astype(np.float64), -1, (size, size), normalize=True,
                         borderType=cv2.BORDER_REPLICATE)


def fill_thin_colour(image: np.ndarray, colour: np.ndarray) -> np.ndarray | None:
    """``image`` (grey, [0, 1]) with its ``colour`` pixels replaced by the mean of the grey
    pixels in the FILL_WINDOW window around each; None (nothing filled) when the colour is
    solid: fewer than FILL_THIN of its pixels have FILL_SUPPORT of their window grey."""
    grey = (~colour).astype(np.float64)
    support = _box_mean(grey, FILL_WINDOW)
    if float((support[colour] >= FILL_SUPPORT).mean()) < FILL_THIN:
        return None
    values = _box_mean(np.where(colour, 0.0, image), FILL_WINDOW)
    out = np.array(image, dtype=np.float32, copy=True)
    out[colour] = (values[colour] / np.maximum(support[colour], 1e-6)).astype(np.float32)
    return out


@dataclass(frozen=True)
class InputCheck:
    statistics: dict[str, float]
    # per statistic outside its range: "low" or "high"
    outside: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    colour: float = 0.0  # share of the scan's pixels in colour (see colour_mask)
    colour_filled: bool = False  # the colour was thin and filled in before the analysis

    @property
    def unusual(self) -> bool:
        return bool(self.outside)

    @property
    def not_ultrasound(self) -> bool:
        """Whether the image may not be a breast ultrasound at all (:data:`NOT_ULTRASOUND`, always
        the first warning when given): then no call is made on it."""
        return bool(self.warnings) and self.warnings[0].startswith(NOT_ULTRASOUND)

    @property
    def outside_text(self) -> str:
        """e.g. ``"texture low; contrast high"`` (empty when nothing is outside)."""
        return "; ".join(f"{name} {side}" for name, side in self.outside.items())

    def as_dict(self) -> dict:
        return {"statistics": self.statistics, "outside": self.outside,
                "warnings": list(self.warnings), "colour": self.colour,
                "colour_filled": self.colour_filled}


# at least this many statistics outside their ranges at once, or more than this share of the
# image in colour: the image may not be an ultrasound scan at all
NOT_ULTRASOUND_STATISTICS = 2
NOT_ULTRASOUND_COLOUR = 0.5


NOT_ULTRASOUND = "This may not be a breast ultrasound image at all"


def with_appearance(check: InputCheck | None, distance: float, threshold: float) -> InputCheck:
    """``check`` with the appearance distance among its statistics and, above ``threshold``, the
    warning that the image may not be a breast ultrasound at all (first, where the statistics
    had not given it already)."""
    check = check or InputCheck({})
    stats = {**check.statistics, "appearance": distance}
    if distance <= threshold:
        return replace(check, statistics=stats)
    reason = (f"the segmenter's encoder sees it as unlike the breast ultrasound images it "
              f"learnt from (appearance distance {distance:.3g}; above {threshold:.3g} for "
              "about 1 in 100 of those)")
    warnings = list(check.warnings)
    if warnings and warnings[0].startswith(NOT_ULTRASOUND):
        head, _, tail = warnings[0].partition(". Check what was uploaded")
        warnings[0] = f"{head}; and {reason}. Check what was uploaded{tail}"
    else:
        warnings.insert(0, f"{NOT_ULTRASOUND} (a photograph, a chart, another kind of scan?): "
                           f"{reason}. Check what was uploaded: on such an image the result "
                           "means nothing.")
    return replace(check, statistics=stats, outside={**check.outside, "appearance": "high"},
                   warnings=tuple(warnings))


def check_image(image: np.ndarray, ranges: Mapping[str, list[float]] | None,
                texture_long_side: int | None = None, colour: float = 0.0,
                colour_filled: bool = False) -> InputCheck:
    """The image's statistics and, for each outside ``ranges`` (None: no check), a warning;
    ``texture_long_side`` must be the one the ranges were fitted with. ``colour``: the share of
    the image's pixels in colour, warned above ``COLOUR_SHARE`` whatever the ranges;
    ``colour_filled``: whether it was filled in (``fill_thin_colour``) before the analysis."""
    stats = image_statistics(image, texture_long_side)
    outside, warnings = {}, []
    if colour > COLOUR_SHARE:
        outside["colour"] = "high"
        warnings.append(
            f"{100 * colour:.1f}% of the scan was in thin colour (a Doppler overlay?), filled "
            "in from the grey around it before the analysis. The models learned from grey "
            "B-mode images only and the fill only partly restores them: analyse the plain "
            "B-mode image where you can." if colour_filled else
            f"{100 * colour:.1f}% of the scan is in colour (a Doppler or elastography "
            "overlay?). The models learned from grey B-mode images only and read colour as "
            "tissue, which moves calls: analyse the plain B-mode image where you can."
        )
    for name in STATISTICS:
        if not ranges or name not in ranges:
            continue
        lo, hi = ranges[name]
        side = "low" if stats[name] < lo else "high" if stats[name] > hi else None
        if side is None:
            continue
        outside[name] = side
        hint = _HINTS[name][side == "high"]
        warnings.append(
            f"This image is {hint} the training images ({name} {stats[name]:.3g}; theirs "
            f"{lo:.3g} to {hi:.3g}). The threshold behind the call was validated on images like "
            "those and may not hold here."
        )
    off = [name for name in STATISTICS if name in outside]
    if len(off) >= NOT_ULTRASOUND_STATISTICS or colour > NOT_ULTRASOUND_COLOUR:
        # one statistic off is a gain or a preset; several at once, or a picture mostly in
        # colour, is seldom a B-mode scan at all
        why = (f"{len(off)} of its statistics lie outside the training images' ranges"
               if len(off) >= NOT_ULTRASOUND_STATISTICS else f"{100 * colour:.0f}% of it is in colour")
        warnings.insert(0, f"{NOT_ULTRASOUND} (a photograph, a chart, another kind of scan?): "
                           f"{why}. Check what was uploaded: on such an image the result means "
                           "nothing.")
    return InputCheck(stats, outside, tuple(warnings), colour, colour_filled and colour > COLOUR_SHARE)
