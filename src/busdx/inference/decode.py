"""Any supported input (bytes, a path, or an array) -> grayscale float image + pixel size.

Raster formats go through Pillow (PNG, JPEG, BMP, TIFF; 8 or 16 bit; gray, RGB or RGBA; OpenCV
decodes the pixels of plain 8-bit PNGs, the usual export, faster), DICOM
through pydicom (busdx.inference.dicom). Files of many frames (a DICOM cine loop, a multi-page
TIFF) give one frame, the first unless ``frame`` names another, and say how many they hold.
The pixel limit is checked from the header, before any pixel is decoded, so a small file that
claims a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from busdx.data.preprocess import MAX_DECODED_BYTES, MAX_PIXELS, pil_to_array, to_gray_float
from busdx.inference.dicom import ScanRegion, frame_index, is_dicom, read_dicom
from busdx.inference.errors import (
    CorruptImage,
    EmptyInput,
    InputError,
    TooLarge,
    UnsupportedFormat,
)
from busdx.inference.quality import colour_mask

RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


# Pages of a TIFF examined at most: counting them costs more than linear time in Pillow, and a
# small file can hold tens of thousands. A cine loop exported as TIFF has a few hundred.
MAX_FRAMES = 1000
# The largest file read from disk (busdx predict, evaluate): uncompressed cine loops can be
# large, but a path that keeps giving bytes (a device, say) must not fill the memory.
MAX_FILE_BYTES = 1024 * 2**20
# bytes per channel of Pillow's modes (the rest hold 8-bit channels)
_MODE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _plain_png(data: bytes, img: Image.Image) -> np.ndarray | None:
    """The pixels of an 8-bit grey, RGB or RGBA PNG (RGB order), decoded by OpenCV, a third
    faster than Pillow; None for any other file, left to Pillow: other bit depths, palettes,
    a transparent colour (which OpenCV would turn into alpha), EXIF (which may rotate it) or a
    file cut short (libpng would print its complaint; Pillow's is the message shown)."""
    # IHDR is always the first chunk (bit depth at byte 24, colour type at 25), IEND the last
    if (img.format != "PNG" or img.mode not in ("L", "RGB", "RGBA") or len(data) < 26
            or data[24] != 8 or data[25] not in (0, 2, 6) or "transparency" in img.info
            or not data.endswith(_PNG_END) or b"eXIf" in data):
        return None
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.shape[:2] != img.size[::-1]:
        return None  # damaged: Pillow says how
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4
                             else cv2.COLOR_BGR2RGB)
    return array


def _signature(data: bytes) -> str | None:
    return next((fmt for magic, fmt in SIGNATURES.items() if data.startswith(magic)), None)


@dataclass(frozen=True)
class DecodedImage:
    image: np.ndarray  # float32 HxW in [0, 1]
    format: str  # "PNG", "JPEG", "BMP", "TIFF", "DICOM" or "array"
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column); None: unknown
    # the scan regions a DICOM file declares (2-D tissue, left to right); none for rasters
    regions: tuple[ScanRegion, ...] = ()
    frames: int = 1  # how many frames the file holds (a cine loop, a multi-page TIFF)
    frame: int = 1  # the one decoded, counted from 1
    # the pixels in colour (busdx.inference.quality.colour_mask); None: none, or a grey image
    colour: np.ndarray | None = None
    # why a calibration the file declares was not used (an implausible pixel size), if so
    spacing_note: str | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def decode_bytes(data: bytes, max_pixels: int = MAX_PIXELS, frame: int | None = None
                 ) -> DecodedImage:
    """Decode an in-memory file; raises an InputError subclass with a user-safe message.
    ``frame``: which frame of a file of many (from 1; negative from the end; None: the first)."""
    if not data:
        raise EmptyInput("the file is empty (zero bytes)")
    if is_dicom(data[:132]):
        dcm = read_dicom(data, max_pixels, frame)
        return DecodedImage(dcm.image, "DICOM", dcm.pixel_spacing_mm, dcm.regions,
                            dcm.frames, dcm.frame, dcm.colour, dcm.spacing_note)
    return _decode_raster(data, max_pixels, frame)


def _decode_raster(data: bytes, max_pixels: int, frame: int | None = None) -> DecodedImage:
    supported = "PNG, JPEG, BMP, TIFF or DICOM"
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; the check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    except Image.DecompressionBombError as err:
        raise TooLarge(f"the image is over the limit of {max_pixels} pixels") from err
    except UnidentifiedImageError as err:
        known = _signature(data)
        if known:  # the right magic but an unreadable header: damaged, not foreign
            raise CorruptImage(f"the {known} file is truncated or damaged") from err
        raise UnsupportedFormat(f"not a supported image: expected {supported}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImage(f"the image header is damaged: {err}") from err
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise TooLarge(
                f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels"
            )
        decoded_bytes = width * height * len(img.getbands()) * _MODE_BYTES.get(img.mode, 1)
        if decoded_bytes > MAX_DECODED_BYTES:
            raise TooLarge(f"image of {width}x{height} pixels in mode {img.mode} would take "
                           f"{decoded_bytes // 2**20} MB decoded, over the limit of "
                           f"{MAX_DECODED_BYTES // 2**20} MB")
        fmt = str(img.format)
        # Only TIFF pages are frames: a JPEG's second picture (MPO) is a preview or a depth map.
        frames = _count_pages(img) if fmt == "TIFF" else 1
        index = frame_index(frame, frames)
        array = _plain_png(data, img)
        if array is not None:
            return DecodedImage(to_gray_float(array), fmt, colour=colour_mask(array))
        try:
            if index:
                img.seek(index)
            img.load()
            # Phone photos and some exporters store the rotation in EXIF rather than pixels.
            array = pil_to_array(ImageOps.exif_transpose(img))
        except Image.DecompressionBombError as err:
            raise TooLarge(f"the image is over the limit of {max_pixels} pixels") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise CorruptImage(f"the {fmt} data is truncated or damaged") from err
    return DecodedImage(to_gray_float(array), fmt, frames=frames, frame=index + 1,
                        colour=colour_mask(array))


def _count_pages(img) -> int:
    """A TIFF's pages, looking at MAX_FRAMES of them at most (TooLarge beyond). Page by page:
    each seek reads one more page's header."""
    try:
        for page in range(1, MAX_FRAMES + 1):
            try:
                img.seek(page)
            except EOFError:
                return page
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImage("the TIFF's list of pages is damaged") from err
    finally:
        img.seek(0)
    raise TooLarge(f"the TIFF holds more than {MAX_FRAMES} pages; at most {MAX_FRAMES} are read")


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``: an InputError, never a hang or a
    memory blow-up, for a folder, a FIFO, a device, a socket, a dangling or looping link, or a
    file over the limit."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as err:  # missing, a dangling or looping link, no permission on the way
        raise InputError(f"cannot read the file: {err.strerror or err}") from err
    if stat.S_ISDIR(info.st_mode):
        raise InputError("is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError("not a regular file (a FIFO, a device or a socket): not read")
    if info.st_size > max_bytes:
        raise TooLarge(f"the file is {info.st_size // 2**20} MB, over the limit of "
                       f"{max_bytes // 2**20} MB")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since the stat is still bounded
    except OSError as err:
        raise InputError(f"cannot read the file: {err.strerror or err}") from err
    if len(data) > max_bytes:
        raise TooLarge(f"the file is over the limit of {max_bytes // 2**20} MB")
    return data


def decode_file(path: str | Path, max_pixels: int = MAX_PIXELS, frame: int | None = None
                ) -> DecodedImage:
    return decode_bytes(read_file(path), max_pixels, frame)


def decode(source: bytes | str | Path | np.ndarray, max_pixels: int = MAX_PIXELS,
           frame: int | None = None) -> DecodedImage:
    """Bytes (an uploaded file), a path, or an already loaded array (gray, RGB or RGBA)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), max_pixels, frame)
    if isinstance(source, np.ndarray):
        if source.size > max_pixels:
            raise TooLarge(f"the image is over the limit of {max_pixels} pixels")
        frame_index(frame, 1)
        return DecodedImage(to_gray_float(source), "array", colour=colour_mask(source))
    return decode_file(source, max_pixels, frame)


def parse_frame(text: str | int | None) -> int | None:
    """A frame as a user writes it: a number from 1, a negative number from the end, or
    "first"/"last"; None or "" is the first. ValueError with a message otherwise."""
    if text is None or isinstance(text, int):
        return text
    word = text.strip().lower()
    if word in ("", "first"):
        return None
    if word == "last":
        return -1
    try:
        value = int(word)
    except ValueError:
        value = 0
    if value == 0:
        raise ValueError(f"frame must be a number from 1, a negative number counted from the "
                         f"end, 'first' or 'last', not {text!r}")
    return value


def is_image_file(path: Path) -> bool:
    """Whether a file found in a folder is worth analysing: a known image suffix, or any other
    name that is DICOM. Hidden files (macOS's ``._name.png`` companions, say) are not."""
    if path.name.startswith(".") or not path.is_file():
        return False
    return path.suffix.lower() in SUPPORTED_SUFFIXES or looks_like_dicom(path)


def looks_like_dicom(path: Path) -> bool:
    """Whether a file with an unknown suffix starts like a DICOM Part 10 file."""
    try:
        with path.open("rb") as fh:
            return is_dicom(fh.read(132))
    except OSError:
        return False
