"""Turning any supported image into the models' input, and mapping outputs back.

Resize policy (shared by training and inference): the image is converted to grayscale in [0, 1],
scaled so that its longer side is ``size`` pixels while keeping the aspect ratio, and padded with
black (the ultrasound background) to a ``size`` x ``size`` square, the original centred. A mask is
transformed with the same geometry (nearest neighbour), so image and mask stay aligned. Because
the geometry is kept in a :class:`Letterbox`, any model output (a mask, a probability map, a
heatmap) can be mapped back to the original pixel grid exactly: remove the padding, then resize.

Intensity policy: 8-bit images are divided by 255, as in the original recipe. 16-bit images are
divided by the largest value their bit depth allows (a 12-bit image stored in 16 bits by 4095),
so the detector's depth and not the image's content sets the scale. Colour images become luma
(ITU-R 601); an alpha channel is composited on black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from busdx.errors import BusdxError

DEFAULT_SIZE = 224

# Decompression bombs: refuse images above this many pixels before decoding them.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# The largest upload the server takes by default (busdx serve --max-upload-mb changes it).
MAX_UPLOAD_MB = 25
# The decoded pixels' size before conversion (width x height x channels x bytes per channel):
# an RGBA image takes four times the memory of a grey one of the same pixel count, and every
# copy the analysis makes scales with it. 100 MB lets a grey image reach the pixel limit and
# an RGB screen capture 33 million pixels.
MAX_DECODED_BYTES = 100 * 2**20
# seconds a client may take to send an upload to busdx serve (busdx.api.app.Limits)
UPLOAD_SECONDS = 60.0


class ImageError(BusdxError, ValueError):
    """An input that cannot be read as an image (the message is safe to show a user)."""


# i / 255 in float64, rounded to float32: what the general path below gives an 8-bit grey image
_UINT8_LEVELS = (np.arange(256) / 255.0).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def integer_scale(array: np.ndarray) -> float:
    """The full scale of an integer array: 255 for 8 bits, else the bits its peak needs."""
    if array.dtype == np.uint8:
        return 255.0
    peak = int(array.max()) if array.size else 0
    bits = max(8, math.ceil(math.log2(peak + 1))) if peak > 0 else 8
    return float(2**bits - 1)


def to_gray_float(array: np.ndarray) -> np.ndarray:
    """Any 2-D (gray), HxWx3 (RGB) or HxWx4 (RGBA) array -> float32 HxW in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported image shape {array.shape}: expected gray, RGB or RGBA")
    if min(array.shape[:2]) < 8:
        raise ImageError(f"image of {array.shape[1]}x{array.shape[0]} pixels is too small")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8 and array.ndim == 2:  # the usual case, in one pass
        return cv2.LUT(np.ascontiguousarray(array), _UINT8_LEVELS)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            array = array.astype(np.float64) - float(array.min())
            data = array / max(float(array.max()), 1.0)
        else:
            data = array.astype(np.float64) / integer_scale(array)
    else:
        data = array.astype(np.float64)
        finite = np.isfinite(data)
        if not finite.all():
            data = np.where(finite, data, 0.0)
        lo, hi = float(data.min()), float(data.max())
        if lo < 0.0 or hi > 1.0:
            data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    if data.ndim == 3:
        if data.shape[2] == 4:
            data = data[..., :3] * data[..., 3:4]
        data = _luma(data)
    return np.clip(data, 0.0, 1.0).astype(np.float32)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as a numpy array that keeps 16-bit depth."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":
        return np.asarray(img, dtype=np.int32)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("L", "RGB", "RGBA"):
        return np.asarray(img)
    if img.mode in ("LA", "PA"):
        return np.asarray(img.convert("RGBA"))
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))


def load_gray(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/BMP/TIFF file as float32 grayscale in [0, 1]."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_gray_float(pil_to_array(img))
    except Image.DecompressionBombError as err:
        raise ImageError(f"image is larger than {MAX_PIXELS} pixels") from err
    except (OSError, SyntaxError) as err:
        raise ImageError(f"cannot decode image: {err}") from err


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as uint8 {0, 1}."""
    with Image.open(path) as img:
        return (np.asarray(img.convert("L")) > 0).astype(np.uint8)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of the aspect-preserving resize-and-pad to a square of ``size``."""

    height: int
    width: int
    size: int = DEFAULT_SIZE

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def inner(self) -> tuple[int, int]:
        """Height and width of the resized image inside the square."""
        return (
            max(1, min(self.size, round(self.height * self.scale))),
            max(1, min(self.size, round(self.width * self.scale))),
        )

    @property
    def offset(self) -> tuple[int, int]:
        """Top and left padding."""
        h, w = self.inner
        return (self.size - h) // 2, (self.size - w) // 2

    def apply(self, array: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Original HxW array -> size x size (float32 for images, input dtype for masks)."""
        h, w = self.inner
        top, left = self.offset
        resized = resize(array, h, w, nearest=True) if nearest else resize_input(array, h, w)
        out = np.zeros((self.size, self.size), dtype=resized.dtype)
        out[top : top + h, left : left + w] = resized
        return out

    def invert(self, array: np.ndarray, nearest: bool = False) -> np.ndarray:
        """size x size array -> the original HxW grid."""
        h, w = self.inner
        top, left = self.offset
        return resize(array[top : top + h, left : left + w], self.height, self.width, nearest)

    def to_original(self, y: float, x: float) -> tuple[float, float]:
        """A point in model coordinates -> the original image's coordinates."""
        top, left = self.offset
        h, w = self.inner
        return (y - top) * self.height / h, (x - left) * self.width / w


def resize(array: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """``array`` resampled to ``height`` x ``width`` with OpenCV: masks (``nearest``: the pixel
    whose centre is nearest, Pillow's rule) keep their dtype; maps come back as float32,
    bilinear when enlarged and averaged over each output pixel's footprint when shrunk. For
    what a network is fed, use :func:`resize_input`."""
    if array.shape == (height, width):
        return array.copy()
    if nearest:
        out = cv2.resize(array.astype(np.uint8), (width, height),
                         interpolation=cv2.INTER_NEAREST_EXACT)
        return out.astype(array.dtype)
    enlarge = height >= array.shape[0] and width >= array.shape[1]
    return cv2.resize(array.astype(np.float32), (width, height),
                      interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)


def resize_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An image resampled for a network (float32): Pillow's bilinear filter, which averages over
    each output pixel's footprint when shrinking. The bundled networks were trained on exactly
    this; OpenCV's filters differ from it by float rounding when enlarging and by the filter
    when shrinking, and a network amplifies even rounding (up to 2e-5 in a logit on BUS-BRA
    fold 5), so the filter changes only with a retrain."""
    if image.shape == (height, width):
        return image.astype(np.float32)
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def prepare(image: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Grayscale float image (any size) -> (size x size float32 in [0, 1], its geometry)."""
    box = Letterbox(image.shape[0], image.shape[1], size)
    return np.clip(box.apply(image), 0.0, 1.0), box


def prepare_pair(
    image: np.ndarray, mask: np.ndarray, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, Letterbox]:
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    x, box = prepare(image, size)
    return x, box.apply(mask.astype(np.uint8), nearest=True), box
