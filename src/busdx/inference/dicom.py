"""DICOM input: one frame as grayscale in [0, 1] (the first unless another is asked for: a cine
loop is many frames, and the reader picks the one that shows the lesion best), the pixel size
when the file says it, and the scan regions the scanner declares.

Only pydicom is needed for uncompressed files (and for the compressed transfer syntaxes pydicom
decodes with the plugins that happen to be installed); anything else is refused with a clear
message instead of a traceback. Ultrasound files give their calibration in the
SequenceOfUltrasoundRegions (PhysicalDeltaX/Y, usually in cm); PixelSpacing is the fallback.
The same sequence says where on the screen each scan is (RegionLocationMin/Max): a scanner's
DICOM is a screen, with text, a body marker and a depth scale around the scan, which the black
frame rule tells from the scan only approximately; the regions give the scan's exact bounds.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass

import numpy as np

from busdx.data.preprocess import MAX_DECODED_BYTES, to_gray_float
from busdx.inference.errors import (
    CorruptImage,
    NoSuchFrame,
    NotUltrasound,
    TooLarge,
    UnsupportedFormat,
)
from busdx.inference.quality import colour_mask
from busdx.inference.scan_area import ScanArea

log = logging.getLogger(__name__)

DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128
CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
SPATIAL_2D = 1  # RegionSpatialFormat of a 2-D image (not M-mode, spectral or a waveform)
TISSUE = 1  # RegionDataType of B-mode tissue (not colour flow or Doppler)
# a declared region smaller than this (pixels, either side) is not a scan a lesion could be in
MIN_REGION = 32
# A pixel size outside this range (mm) is not one an ultrasound image has (a breast scan's pixels
# are 0.03-0.5 mm): the file's calibration is ignored and the lengths are given in pixels.
SPACING_RANGE_MM = (0.001, 10.0)


# Modalities whose images cannot be a breast ultrasound scan. Secondary captures (SC) and
# "other" (OT) stay allowed: screen grabs of ultrasound machines are often stored as those.
OTHER_MODALITIES = {
    "CT": "a CT image", "MR": "an MR image", "CR": "a radiograph", "DX": "a radiograph",
    "MG": "a mammogram", "PT": "a PET image", "NM": "a nuclear medicine image",
    "XA": "an X-ray angiogram", "RF": "a fluoroscopy image", "RG": "a radiograph",
    "IO": "an intra-oral radiograph", "PX": "a panoramic radiograph", "OP": "an eye photograph",
    "OPT": "an eye tomogram", "XC": "a camera photograph", "ES": "an endoscopy image",
    "GM": "a microscopy image", "SM": "a slide microscopy image", "BMD": "a bone densitometry image",
}


def is_dicom(head: bytes) -> bool:
    """True when ``head`` (at least the first 132 bytes) carries the DICOM Part 10 magic."""
    return head[MAGIC_OFFSET : MAGIC_OFFSET + 4] == DICOM_MAGIC


@dataclass(frozen=True)
class ScanRegion:
    """A 2-D tissue region the file declares: where the scan is, and its calibration if any."""

    area: ScanArea
    pixel_spacing_mm: tuple[float, float] | None  # (row, column)


@dataclass(frozen=True)
class DicomImage:
    image: np.ndarray  # float32 HxW in [0, 1]
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing
    photometric: str
    frames: int  # how many the file holds
    frame: int  # the one decoded, counted from 1
    regions: tuple[ScanRegion, ...] = ()  # the 2-D tissue regions, left to right
    colour: np.ndarray | None = None  # the pixels in colour (quality.colour_mask), if any
    # why a calibration the file declares was not used (an implausible pixel size), if so
    spacing_note: str | None = None


class ImplausibleSpacing(ValueError):
    """A declared pixel size that no ultrasound image has (zero, negative, huge, tiny, not a
    number): the message says which, for the answer."""


def plausible_spacing(row_mm: object, col_mm: object, source: str) -> tuple[float, float]:
    """(row, column) mm per pixel, when both are finite numbers in SPACING_RANGE_MM; else
    ImplausibleSpacing naming ``source`` (the attribute they came from)."""
    try:
        row, col = float(row_mm), float(col_mm)
    except (TypeError, ValueError, OverflowError) as err:
        raise ImplausibleSpacing(f"{source} is not a pair of numbers") from err
    low, high = SPACING_RANGE_MM
    for value in (row, col):
        if not (math.isfinite(value) and low <= abs(value) <= high):
            raise ImplausibleSpacing(f"{source} gives {value:g} mm per pixel, outside the "
                                     f"{low:g}-{high:g} mm an ultrasound pixel can measure")
    return abs(row), abs(col)


def _region_spacing(region) -> tuple[float, float] | None:
    """(row, column) mm per pixel of one region calibrated in cm; None when it declares none.
    ImplausibleSpacing when it declares one no scan has."""
    units_x = region.get("PhysicalUnitsXDirection")
    units_y = region.get("PhysicalUnitsYDirection")
    dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
    if units_x != CM_UNITS or units_y != CM_UNITS or dx is None or dy is None:
        return None
    try:
        dx_mm, dy_mm = float(dx) * 10.0, float(dy) * 10.0
    except (TypeError, ValueError, OverflowError) as err:
        raise ImplausibleSpacing("PhysicalDeltaX/Y of an ultrasound region is not a number") \
            from err
    return plausible_spacing(dy_mm, dx_mm, "PhysicalDeltaX/Y of an ultrasound region")


def _region_spacing_or_none(region) -> tuple[float, float] | None:
    try:
        return _region_spacing(region)
    except ImplausibleSpacing:
        return None


def ultrasound_spacing(ds) -> tuple[float, float] | None:
    """(row, column) mm per pixel from the first 2-D ultrasound region calibrated in cm.
    ImplausibleSpacing when the first calibrated region declares a size no scan has."""
    for region in ds.get("SequenceOfUltrasoundRegions") or ():
        spacing = _region_spacing(region)
        if spacing is not None:
            return spacing
    return None


def scan_regions(ds, rows: int, cols: int) -> tuple[ScanRegion, ...]:
    """The 2-D tissue regions of SequenceOfUltrasoundRegions, clipped to the image, left to
    right. A region without a data type counts as tissue (some exporters leave it out); colour
    flow, Doppler and M-mode regions do not count, nor do degenerate ones, nor one that lies
    inside another (a zoom box drawn over the scan, say). A damaged sequence gives none: the
    regions refine the analysis, and the black frame rule takes over without them."""
    found: list[ScanRegion] = []
    try:
        for region in ds.get("SequenceOfUltrasoundRegions") or ():
            if region.get("RegionSpatialFormat") != SPATIAL_2D:
                continue
            if region.get("RegionDataType", TISSUE) != TISSUE:
                continue
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
            # the Max coordinates are inclusive
            area = ScanArea(max(0, y0), min(rows, y1 + 1), max(0, x0), min(cols, x1 + 1))
            if area.height < MIN_REGION or area.width < MIN_REGION:
                continue
            found.append(ScanRegion(area, _region_spacing_or_none(region)))
    except (AttributeError, TypeError, ValueError):
        return ()
    kept = [r for i, r in enumerate(found)
            if not any(j != i and _inside(r.area, o.area) and (r.area != o.area or j < i)
                       for j, o in enumerate(found))]
    return tuple(sorted(kept, key=lambda r: (r.area.left, r.area.top)))


def _inside(a: ScanArea, b: ScanArea) -> bool:
    return (a.top >= b.top and a.bottom <= b.bottom and a.left >= b.left
            and a.right <= b.right)


def pixel_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel: the ultrasound regions' calibration, else PixelSpacing; and,
    when the file declares a size no ultrasound pixel has (or a PixelSpacing that is not two
    numbers), None and a sentence saying so: the lengths are then given in pixels."""
    try:
        spacing = ultrasound_spacing(ds)
        if spacing is not None:
            return spacing, None
        value = ds.get("PixelSpacing")
        if value is None:
            return None, None
        # one number (DSfloat) where two belong: a single-valued PixelSpacing
        values = [value] if isinstance(value, (int, float, str, bytes)) else list(value)
        if len(values) != 2:
            raise ImplausibleSpacing(f"PixelSpacing holds {len(values)} value"
                                     f"{'s' if len(values) != 1 else ''}, not 2")
        return plausible_spacing(values[0], values[1], "PixelSpacing"), None
    except ImplausibleSpacing as err:
        return None, f"the file's calibration was ignored: {err}; lengths are in pixels"
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None, "the file's calibration was ignored: it could not be read; lengths are " \
                     "in pixels"


def _scale(frame: np.ndarray, ds) -> np.ndarray:
    """Integer gray frame -> float in [0, 1] using the bits the detector stores."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if np.issubdtype(frame.dtype, np.integer) and frame.min() >= 0 and 0 < bits <= 32:
        return np.clip(frame.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    return to_gray_float(frame).astype(np.float64)


def frame_index(frame: int | None, frames: int) -> int:
    """The 0-based index of ``frame``: counted from 1, or from the end when negative (-1 is the
    last; cine loops stored after a freeze end on the frozen image). None is the first."""
    if frame is None:
        return 0
    if frame == 0 or not -frames <= frame <= frames:
        raise NoSuchFrame(
            f"frame {frame} was asked for, but the file holds "
            f"{frames} frame{'s' if frames != 1 else ''} (frames count from 1; -1 is the last)"
        )
    return frame - 1 if frame > 0 else frames + frame


def read_dicom(data: bytes, max_pixels: int, frame: int | None = None) -> DicomImage:
    """Decode one frame (the first unless ``frame`` says, see ``frame_index``) of a DICOM file
    held in memory."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        # The pixel data stays in ``data`` (deferred): a cine loop's frames are read one at a
        # time below, not copied whole into the dataset.
        ds = pydicom.dcmread(io.BytesIO(data), defer_size="1 MB")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptImage(f"cannot read the DICOM file: {err}") from err
    if "PixelData" not in ds:
        raise UnsupportedFormat("the DICOM file has no pixel data (not an image)")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in OTHER_MODALITIES:
        raise NotUltrasound(
            f"the DICOM file is {OTHER_MODALITIES[modality]} (Modality {modality}), not an "
            "ultrasound image: busdx reads breast ultrasound (Modality US) only")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise CorruptImage("the DICOM file lacks its image size (Rows, Columns)") from err
    if rows * cols > max_pixels:
        raise TooLarge(f"image of {cols}x{rows} pixels is over the limit of {max_pixels} pixels")
    allocated = max(1, int(ds.get("BitsAllocated", 8) or 8) // 8)
    if rows * cols * samples * allocated > MAX_DECODED_BYTES:  # one frame, decoded
        raise TooLarge(f"a frame of {cols}x{rows} pixels with {samples} channel(s) of "
                       f"{8 * allocated} bits would take {rows * cols * samples * allocated // 2**20}"
                       f" MB decoded, over the limit of {MAX_DECODED_BYTES // 2**20} MB")
    index = frame_index(frame, frames)
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
        # From the file, index reads and decodes only that frame: a long loop is not copied
        # whole into memory a second time. raw=False converts YBR to RGB with pydicom's
        # convert_color_space, which knows whether the decoder already did so.
        pixels = pixel_array(io.BytesIO(data), index=index if frames > 1 else None, raw=False)
    except Exception as err:  # decoders raise many types; none of them should become a 500
        log.debug("DICOM decode failed: %s", type(err).__name__)
        raise UnsupportedFormat(
            f"cannot decode DICOM pixel data with transfer syntax {syntax_name}: "
            "the decoder is missing or the data is damaged"
        ) from err
    if pixels.ndim == 3 and samples == 1:
        pixels = pixels[0]  # some decoders keep a leading frame axis
    if photometric in GRAY:
        if pixels.ndim != 2:
            raise UnsupportedFormat(f"unexpected DICOM pixel array shape {pixels.shape}")
        gray = _scale(pixels, ds)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are bright
            gray = 1.0 - gray
        image, colour = to_gray_float(gray.astype(np.float32)), None
    else:
        image, colour = to_gray_float(pixels), colour_mask(pixels)
    spacing, spacing_note = pixel_spacing(ds)
    return DicomImage(image, spacing, photometric, frames, index + 1,
                      scan_regions(ds, *image.shape), colour, spacing_note)
