"""Pictures of a result as PNG bytes, drawn and encoded with OpenCV (no matplotlib at serving
time): the mask (0/255), the lesion outline and the heatmap as transparent layers (the web page
stacks them over the image and toggles them), and both composited onto the image.

Arrays here are in OpenCV's channel order (BGR, BGRA), which is what ``png_bytes`` encodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

OUTLINE_RGB = (255, 214, 0)  # amber: visible on gray, and neither "benign green" nor "alarm red"
_OUTLINE_BGR = OUTLINE_RGB[::-1]
HEAT_MAX_ALPHA = 0.6
HEAT_FLOOR = 0.1  # weaker evidence stays transparent so the anatomy shows through
# Level 1 with the "sub" filter: a third of the time of Pillow's level 3 for files about 5%
# larger (measured on BUS-BRA images: benchmarks/postprocess.py).
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255, rounded (NaN -> 0)."""
    # fmax and fmin drop NaN (np.clip keeps it, and OpenCV would make it 255)
    return cv2.convertScaleAbs(np.fmin(np.fmax(image, 0.0), 1.0), alpha=255.0)


def outline_thickness(height: int, width: int) -> int:
    """Pixels either side of the border drawn with it: 1 up to 450 px, 2 up to 750..."""
    return max(1, round(max(height, width) / 300))


def _contours(mask: np.ndarray) -> tuple:
    # every border, holes' included; vertices only: the lines between them are drawn
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_LIST,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return contours


def _draw_outline(canvas: np.ndarray, contours: tuple, colour: tuple) -> np.ndarray:
    h, w = canvas.shape[:2]
    width = 2 * outline_thickness(h, w) - 1  # centred on the border pixels
    return cv2.drawContours(canvas, contours, -1, colour, width, lineType=cv2.LINE_8)


def _heat_alpha_table() -> np.ndarray:
    level = np.arange(256) / 255.0
    return np.where(level >= HEAT_FLOOR, HEAT_MAX_ALPHA * level, 0.0).astype(np.float32)


_HEAT_ALPHA = _heat_alpha_table()  # opacity in [0, 1] by heat level 0..255


def heat_drawn(heat: np.ndarray) -> bool:
    """Whether the heatmap layer draws anything (its strongest level is not transparent)."""
    if not heat.size:
        return False
    strongest = to_uint8(np.full((1, 1), np.max(heat), dtype=np.float32))  # as the layer rounds
    return bool(_HEAT_ALPHA[strongest[0, 0]] > 0)


def _heat_pictures(heat: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap as a BGRA layer (inferno colours, perceptually ordered and readable in grey
    print, more opaque where the evidence is stronger) and over ``base`` (BGR)."""
    level = to_uint8(heat)
    layer, over = np.zeros(base.shape[:2] + (4,), dtype=np.uint8), base.copy()
    x, y, w, h = cv2.boundingRect(level)
    if w == 0:
        return layer, over
    # the heat lies on the crop's window: colour and blend only there
    box = (slice(y, y + h), slice(x, x + w))
    colours = cv2.applyColorMap(level[box], cv2.COLORMAP_INFERNO)
    alpha = cv2.LUT(level[box], _HEAT_ALPHA)
    layer[box] = cv2.cvtColor(colours, cv2.COLOR_BGR2BGRA)
    layer[box + (3,)] = to_uint8(alpha)
    over[box] = cv2.blendLinear(colours, base[box], alpha, 1.0 - alpha)
    return layer, over


def png_bytes(array: np.ndarray) -> bytes:
    """A grey, BGR or BGRA uint8 array as a PNG file."""
    ok, data = cv2.imencode(".png", array, _PNG)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {array.shape} as PNG")
    return data.tobytes()


# Pictures for a screen: larger images are shown downscaled, and encoding 12-megapixel PNGs
# would cost seconds. The mask is always kept at the input's full size.
MAX_DISPLAY_SIDE = 1600


@dataclass(frozen=True)
class Overlays:
    """PNG files. ``mask`` is at the input's size; the others at the display size (the input's
    size, or at most MAX_DISPLAY_SIDE pixels on the longer side)."""

    image: bytes  # the grayscale image the models saw (browsers cannot show DICOM or TIFF)
    mask: bytes  # 0 and 255
    outline: bytes  # RGBA layer
    heatmap: bytes  # RGBA layer
    overlay: bytes  # image with the outline
    heatmap_overlay: bytes  # image with the heatmap

    def as_dict(self) -> dict[str, bytes]:
        return dict(self.__dict__)


def display_size(height: int, width: int, max_side: int = MAX_DISPLAY_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _to_display(image, mask, heat, max_side):
    h, w = image.shape
    dh, dw = display_size(h, w, max_side)
    if (dh, dw) == (h, w):
        return image, mask, heat
    # area averaging: no aliasing of speckle when a large image is shown smaller
    image, heat = (cv2.resize(np.asarray(a, dtype=np.float32), (dw, dh),
                              interpolation=cv2.INTER_AREA) for a in (image, heat))
    mask = cv2.resize(np.asarray(mask, dtype=np.uint8), (dw, dh),
                      interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask, heat


def draw(image: np.ndarray, mask: np.ndarray, heat: np.ndarray) -> dict[str, np.ndarray]:
    """The pictures of a result at the image's size: ``image`` (grey), the ``outline`` and
    ``heatmap`` layers (BGRA) and the image with each (``overlay``, ``heatmap_overlay``, BGR)."""
    grey = to_uint8(image)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    contours = _contours(mask)
    outline = _draw_outline(np.zeros(grey.shape + (4,), dtype=np.uint8), contours,
                            (*_OUTLINE_BGR, 255))
    heat_layer, heat_over = _heat_pictures(heat, base)
    return {
        "image": grey,
        "outline": outline,
        "heatmap": heat_layer,
        "overlay": _draw_outline(base.copy(), contours, _OUTLINE_BGR),
        "heatmap_overlay": heat_over,
    }


def render(
    image: np.ndarray, mask: np.ndarray, heat: np.ndarray, max_side: int = MAX_DISPLAY_SIDE
) -> Overlays:
    pictures = {"mask": mask_png_array(mask), **draw(*_to_display(image, mask, heat, max_side))}
    # OpenCV lets go of the GIL while it encodes: two at a time, the slowest (the image with
    # each layer) first, take about half the time of one after the other
    names = ["heatmap_overlay", "overlay", "image", "heatmap", "outline", "mask"]
    with ThreadPoolExecutor(2) as pool:
        files = dict(zip(names, pool.map(png_bytes, [pictures[n] for n in names]), strict=True))
    return Overlays(**files)


def mask_png_array(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) > 0).astype(np.uint8) * 255


def mask_png(mask: np.ndarray) -> bytes:
    """The mask as a PNG file of 0 and 255, at its own size."""
    return png_bytes(mask_png_array(mask))
