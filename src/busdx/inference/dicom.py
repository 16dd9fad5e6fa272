"""DICOM input: the first frame as grayscale in [0, 1], and the pixel size when the file says it.

Only pydicom is needed for uncompressed files (and for the compressed transfer syntaxes pydicom
decodes with the plugins that happen to be installed); anything else is refused with a clear
message instead of a traceback. Ultrasound files give their calibration in the
SequenceOfUltrasoundRegions (PhysicalDeltaX/Y, usually in cm); PixelSpacing is the fallback.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from busdx.data.preprocess import to_gray_float
from busdx.inference.errors import CorruptImage, TooLarge, UnsupportedFormat

log = logging.getLogger(__name__)

DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128
CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")


def is_dicom(head: bytes) -> bool:
    """True when ``head`` (at least the first 132 bytes) carries the DICOM Part 10 magic."""
    return head[MAGIC_OFFSET : MAGIC_OFFSET + 4] == DICOM_MAGIC


@dataclass(frozen=True)
class DicomImage:
    image: np.ndarray  # float32 HxW in [0, 1]
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing
    photometric: str
    frames: int


def ultrasound_spacing(ds) -> tuple[float, float] | None:
    """(row, column) mm per pixel from the first 2-D ultrasound region calibrated in cm."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    for region in regions:
        units_x = region.get("PhysicalUnitsXDirection")
        units_y = region.get("PhysicalUnitsYDirection")
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if units_x != CM_UNITS or units_y != CM_UNITS or dx is None or dy is None:
            continue
        dx_mm, dy_mm = abs(float(dx)) * 10.0, abs(float(dy)) * 10.0
        if dx_mm > 0 and dy_mm > 0:
            return dy_mm, dx_mm
    return None


def pixel_spacing(ds) -> tuple[float, float] | None:
    spacing = ultrasound_spacing(ds)
    if spacing is not None:
        return spacing
    value = ds.get("PixelSpacing")
    if value is not None and len(value) == 2:
        row, col = abs(float(value[0])), abs(float(value[1]))
        if row > 0 and col > 0:
            return row, col
    return None


def _scale(frame: np.ndarray, ds) -> np.ndarray:
    """Integer gray frame -> float in [0, 1] using the bits the detector stores."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if np.issubdtype(frame.dtype, np.integer) and frame.min() >= 0 and 0 < bits <= 32:
        return np.clip(frame.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    return to_gray_float(frame).astype(np.float64)


def read_dicom(data: bytes, max_pixels: int) -> DicomImage:
    """Decode the first frame of a DICOM file held in memory."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptImage(f"cannot read the DICOM file: {err}") from err
    if "PixelData" not in ds:
        raise UnsupportedFormat("the DICOM file has no pixel data (not an image)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise CorruptImage("the DICOM file lacks its image size (Rows, Columns)") from err
    if rows * cols > max_pixels:
        raise TooLarge(f"image of {cols}x{rows} pixels is over the limit of {max_pixels} pixels")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in GRAY + COLOUR:
        raise UnsupportedFormat(
            f"DICOM photometric interpretation {photometric or '(missing)'} is not supported "
            f"(supported: {', '.join(GRAY + COLOUR)})"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        # index=0 decodes only the first frame; raw=False converts YBR to RGB with pydicom's
        # convert_color_space, which knows whether the decoder already did so.
        frame = pixel_array(ds, index=0 if frames > 1 else None, raw=False)
    except Exception as err:  # decoders raise many types; none of them should become a 500
        log.debug("DICOM decode failed: %s", type(err).__name__)
        raise UnsupportedFormat(
            f"cannot decode DICOM pixel data with transfer syntax {syntax_name}: "
            "the decoder is missing or the data is damaged"
        ) from err
    if frame.ndim == 3 and samples == 1:
        frame = frame[0]  # some decoders keep a leading frame axis
    if photometric in GRAY:
        if frame.ndim != 2:
            raise UnsupportedFormat(f"unexpected DICOM pixel array shape {frame.shape}")
        gray = _scale(frame, ds)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are bright
            gray = 1.0 - gray
        image = to_gray_float(gray.astype(np.float32))
    else:
        image = to_gray_float(frame)
    return DicomImage(image, pixel_spacing(ds), photometric, frames)
