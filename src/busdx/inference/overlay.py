"""Pictures of a result as PNG bytes, drawn with numpy and Pillow only (no matplotlib at serving
time): the mask (0/255), the lesion outline and the heatmap as transparent layers (the web page
stacks them over the image and toggles them), and both composited onto the image."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from busdx.data.preprocess import _resize
from busdx.inference.measure import _shift, border

OUTLINE_RGB = (255, 214, 0)  # amber: visible on gray, and neither "benign green" nor "alarm red"
HEAT_MAX_ALPHA = 0.6
HEAT_FLOOR = 0.1  # weaker evidence stays transparent so the anatomy shows through

# Inferno, sampled at 9 evenly spaced points: perceptually ordered and readable in gray print.
_INFERNO = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (inferno, linearly interpolated)."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    t = (v - lo)[..., None]
    return np.round(_INFERNO[lo] * (1 - t) + _INFERNO[hi] * t).astype(np.uint8)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    g = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def outline_thickness(height: int, width: int) -> int:
    return max(1, round(max(height, width) / 300))


def outline_layer(mask: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """RGBA layer: the mask's outer border, ``thickness`` pixels wide, opaque; elsewhere clear."""
    h, w = mask.shape
    thickness = thickness or outline_thickness(h, w)
    edge = border(mask)
    grown = edge.copy()
    for _ in range(thickness - 1):  # grow inwards and outwards alike
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            grown |= _shift(edge, dy, dx)
        edge = grown.copy()
    layer = np.zeros((h, w, 4), dtype=np.uint8)
    layer[grown, :3] = OUTLINE_RGB
    layer[grown, 3] = 255
    return layer


def heatmap_layer(heat: np.ndarray) -> np.ndarray:
    """RGBA layer: the colormapped heatmap, more opaque where the evidence is stronger."""
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    alpha = np.where(heat >= HEAT_FLOOR, HEAT_MAX_ALPHA * heat, 0.0)
    layer = np.zeros(heat.shape + (4,), dtype=np.uint8)
    layer[..., :3] = colormap(heat)
    layer[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return layer


def composite(base_rgb: np.ndarray, layer_rgba: np.ndarray) -> np.ndarray:
    alpha = layer_rgba[..., 3:4].astype(np.float32) / 255.0
    out = base_rgb.astype(np.float32) * (1 - alpha) + layer_rgba[..., :3].astype(np.float32) * alpha
    return np.round(out).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Level 3: a fraction of the time of the default for files a few percent larger.
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


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
    image = _resize(image.astype(np.float32), dh, dw, nearest=False)
    heat = _resize(heat.astype(np.float32), dh, dw, nearest=False)
    mask = _resize(mask.astype(np.uint8), dh, dw, nearest=True)
    return image, mask, heat


def render(
    image: np.ndarray, mask: np.ndarray, heat: np.ndarray, max_side: int = MAX_DISPLAY_SIDE
) -> Overlays:
    full_mask = png_bytes(mask_png_array(mask))
    image, mask, heat = _to_display(image, mask, heat, max_side)
    base = gray_rgb(image)
    outline = outline_layer(mask)
    heat_layer = heatmap_layer(heat)
    return Overlays(
        image=png_bytes(base[..., 0]),
        mask=full_mask,
        outline=png_bytes(outline),
        heatmap=png_bytes(heat_layer),
        overlay=png_bytes(composite(base, outline)),
        heatmap_overlay=png_bytes(composite(base, heat_layer)),
    )


def mask_png_array(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) > 0).astype(np.uint8) * 255
