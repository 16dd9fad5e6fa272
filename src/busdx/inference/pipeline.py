"""One analysis of one image, shared by the CLI, the API and the tests.

decode -> scan area (a DICOM's declared ultrasound regions, busdx.inference.dicom, then
busdx.inference.scan_area: a screen capture's black frame cut off; the outputs are put back on
the whole image's grid) -> input check (busdx.inference.quality: is
the image like the training images?) -> letterbox -> segmenter -> sigmoid -> back to the
original grid (bilinear) -> above the card's segmenter threshold (0.5) -> largest connected
component, holes filled -> lesion crop (busdx.data.crop, one per context of the card) ->
classifier, logits averaged over the crops -> calibrated probability sigmoid((logit + shift) /
T) (the card's shift is 0 but after a site recalibration, busdx.evaluation.site), label at the
card's threshold, risk band -> heatmap (the CAM of the crop at the card's context, ReLU, scaled
to [0, 1], smoothed and faded out towards the crop's edge, mapped back onto the image) ->
measurements -> overlays.

When the segmenter finds no lesion, the classifier still sees the whole image (letterboxed, as
busdx.data.crop does without a mask), measurements are None and ``note`` says so: the user gets
a probability with a clear warning rather than nothing, and can judge the image themselves.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from busdx import DISCLAIMER, __version__
from busdx.data.crop import CropBox, lesion_crop
from busdx.data.preprocess import MAX_PIXELS, Letterbox, prepare, resize
from busdx.inference.components import fill_holes, largest_component
from busdx.inference.decode import DecodedImage, decode
from busdx.inference.errors import BlankImage
from busdx.inference.measure import Measurements, measure
from busdx.inference.models import ClassifierSettings, Models
from busdx.inference.overlay import Overlays, heat_drawn, render
from busdx.inference.quality import (
    COLOUR_SHARE,
    InputCheck,
    check_image,
    fill_thin_colour,
    is_blank,
    with_appearance,
)
from busdx.inference.risk import RiskBand, risk_band
from busdx.inference.scan_area import (
    PANES,
    ScanArea,
    bounding,
    find_scan_area_within,
    split_dual_view,
)
from busdx.models.contract import (
    APPEARANCE_OUTPUT,
    INPUT_NAME,
    PRESENCE_OUTPUT,
    SEGMENTER_OUTPUT,
)
from busdx.numeric import sigmoid

# how the part analysed was found (Analysis.scan_area_from)
FROM_REGIONS = "ultrasound regions"  # the DICOM file's SequenceOfUltrasoundRegions
FROM_FRAME = "black frame"  # busdx.inference.scan_area's rule

# A scan area or pane thinner than this (pixels) holds no lesion the networks could outline.
MIN_SCAN_SIDE = 16

NO_LESION = "no lesion"  # the label when the segmenter outlines nothing: no call is made
NO_LESION_NOTE = (
    "No lesion found by the segmenter: no benign or malignant call is made; the probability is "
    "the whole image's, for reference only; no measurements"
)
DISMISSED_NOTE = (
    "No lesion found: the segmenter marked a region, but the lesion-presence check judged that "
    "the image shows no lesion; no benign or malignant call is made; the probability is the "
    "whole image's, for reference only; no measurements"
)
# the label when a lesion was outlined but the image may not be a breast ultrasound at all
# (busdx.inference.quality.NOT_ULTRASOUND): a call or a band on a chart or a photograph would be
# read before its caution, in a CSV or a PACS as much as on the page
WITHHELD = "call withheld"
WITHHELD_NOTE = (
    "Call withheld: this may not be a breast ultrasound image at all (see the caution); on such "
    "an image the networks' output means nothing: no benign or malignant call and no risk band "
    "are given, and the probability, the outline and the measurements are for reference only"
)


@dataclass
class Analysis:
    probability: float  # calibrated probability of malignancy
    # "benign" or "malignant" at ``threshold``; NO_LESION without an outline; WITHHELD when the
    # image may not be a breast ultrasound at all
    label: str
    threshold: float
    # None when no lesion is found (a band grades a lesion) or the call is withheld
    risk: RiskBand | None
    logit: float  # the served logit (shift included): probability = sigmoid(logit / temperature)
    temperature: float
    lesion_found: bool
    note: str
    measurements: Measurements | None
    width: int
    height: int
    format: str
    pixel_spacing_mm: tuple[float, float] | None
    model_version: str
    image: np.ndarray = field(repr=False)  # float32 HxW in [0, 1]
    mask: np.ndarray = field(repr=False)  # uint8 HxW {0, 1}
    heatmap: np.ndarray = field(repr=False)  # float32 HxW in [0, 1]
    crop_box: CropBox | None = None
    overlays: Overlays | None = field(default=None, repr=False)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # the image's statistics against the training images' ranges (card: input_check)
    input_check: InputCheck | None = None
    # the part analysed when black margins were cut off (None: the whole image)
    scan_area: ScanArea | None = None
    # of a dual-view capture: which pane ("left" or "right") and where it is in the capture
    pane: tuple[str, ScanArea] | None = None
    # what located the pane or the scan area: FROM_REGIONS or FROM_FRAME (None: neither)
    scan_area_from: str | None = None
    # how many 2-D tissue regions the DICOM file declares (two side by side: a dual view)
    regions: int = 0
    # of a file of many frames (a cine loop): the frame analysed, counted from 1, and how many
    frame: int = 1
    frames: int = 1
    # why the file's declared pixel size was not used (not a size an ultrasound pixel has)
    spacing_note: str | None = None
    # the presence check's logit that the image shows a lesion (None: the release has none)
    presence: float | None = None

    @property
    def unusual(self) -> bool:
        """Whether the input check found the image unlike the training images (a caution)."""
        return bool(self.input_check and self.input_check.unusual)

    @property
    def not_ultrasound(self) -> bool:
        """Whether the image may not be a breast ultrasound at all (no call is made on it)."""
        return bool(self.input_check and self.input_check.not_ultrasound)

    @property
    def malignant_at_threshold(self) -> bool:
        """Whether an outlined lesion's probability is at or above the threshold, whether the
        call is shown or withheld: what the studies compare across changes of an image."""
        return self.lesion_found and self.probability >= self.threshold

    def to_json(self, images: bool = True) -> dict[str, Any]:
        """The API's answer: plain JSON types, the PNGs base64-encoded."""
        out: dict[str, Any] = {
            "probability": self.probability,
            "label": self.label,
            "threshold": self.threshold,
            "risk_band": self.risk.as_dict() if self.risk else None,
            "lesion_found": self.lesion_found,
            "presence": self.presence,
            "logit": self.logit,
            "temperature": self.temperature,
            "note": self.note,
            "heatmap_shown": heat_drawn(self.heatmap),
            "input_check": self.input_check.as_dict() if self.input_check else None,
            "measurements": self.measurements.as_dict() if self.measurements else None,
            "image": {
                "width": self.width,
                "height": self.height,
                "format": self.format,
                "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
                "scan_area": self.scan_area.as_dict() if self.scan_area else None,
                "pane": {"side": self.pane[0], **self.pane[1].as_dict()} if self.pane else None,
                "scan_area_from": self.scan_area_from,
                "regions": self.regions,
                "frame": self.frame,
                "frames": self.frames,
                "pixel_spacing_note": self.spacing_note,
            },
            "timings_ms": self.timings_ms,
            "model_version": self.model_version,
            "busdx_version": __version__,
            "disclaimer": DISCLAIMER,
        }
        if images and self.overlays is not None:
            out["png"] = {
                name: base64.b64encode(data).decode("ascii")
                for name, data in self.overlays.as_dict().items()
            }
        return out


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round((now - self._last) * 1000.0, 2)
        self._last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round((time.perf_counter() - self._start) * 1000.0, 2)
        return self.timings


def segment(image: np.ndarray, models: Models,
            letterboxed: tuple[np.ndarray, Letterbox] | None = None) -> np.ndarray:
    """The lesion mask (uint8 {0, 1}, the image's size): one component, no holes; empty when
    the release's presence check says the image shows no lesion.
    ``letterboxed``: ``prepare(image, models.segmenter_size)``, when the caller has it."""
    return read_segmenter(image, models, letterboxed).mask


@dataclass(frozen=True)
class SegmenterReading:
    """What one run of the segmenter says of an image."""

    mask: np.ndarray  # as :func:`segment` returns it
    # the distance of the image's features from the training images' (None: no such check)
    appearance: float | None = None
    # the presence check's logit (None: no such check), and whether it emptied an outline
    presence: float | None = None
    outline_dismissed: bool = False


def read_segmenter(image: np.ndarray, models: Models,
                   letterboxed: tuple[np.ndarray, Letterbox] | None = None) -> SegmenterReading:
    """The lesion mask, the appearance distance and the presence logit, from one run."""
    extra = tuple(name for name, on in ((APPEARANCE_OUTPUT, models.appearance_threshold),
                                        (PRESENCE_OUTPUT, models.presence_threshold))
                  if on is not None)
    full, rest = run_segmenter(image, models.segmenter, models.segmenter_size, letterboxed,
                               extra)
    values = {name: float(r.reshape(-1)[0]) for name, r in zip(extra, rest, strict=True)}
    presence = values.get(PRESENCE_OUTPUT)
    mask, dismissed = served_mask(full > models.mask_threshold, presence,
                                  models.presence_threshold)
    return SegmenterReading(mask, values.get(APPEARANCE_OUTPUT), presence, dismissed)


def served_mask(above: np.ndarray, presence: float | None = None,
                presence_threshold: float | None = None) -> tuple[np.ndarray, bool]:
    """The mask the product serves from the pixels above the segmenter's threshold: their
    largest component, holes filled; empty when the presence check's logit ``presence`` is
    below ``presence_threshold``. And whether the check emptied an outline."""
    mask = fill_holes(largest_component(above))
    dismissed = (presence is not None and presence_threshold is not None
                 and presence < presence_threshold and bool(mask.any()))
    return (np.zeros_like(mask) if dismissed else mask), dismissed


def lesion_probability(image: np.ndarray, segmenter, size: int,
                       letterboxed: tuple[np.ndarray, Letterbox] | None = None) -> np.ndarray:
    """The segmenter's lesion probability (float32) on the grid of ``image``, before the
    threshold; ``segmenter``: an ONNX Runtime session, ``size``: its input size."""
    return run_segmenter(image, segmenter, size, letterboxed)[0]


def run_segmenter(image: np.ndarray, segmenter, size: int,
                  letterboxed: tuple[np.ndarray, Letterbox] | None = None,
                  extra: tuple[str, ...] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    """The lesion probability (see :func:`lesion_probability`) and the segmenter's ``extra``
    outputs, from one run."""
    x, box = letterboxed or prepare(image, size)
    logits, *rest = segmenter.run([SEGMENTER_OUTPUT, *extra], {INPUT_NAME: x[None, None]})
    return box.invert(sigmoid(logits[0, 0].astype(np.float32))), rest


def classifier_inputs(
    image: np.ndarray, mask: np.ndarray | None, settings: ClassifierSettings,
    whole: np.ndarray | None = None,
) -> tuple[np.ndarray, CropBox | None, int]:
    """The classifier's batch [K, V, S, S] for one image, the window of the heatmap's crop (None:
    the whole image) and that crop's index in the batch.

    With a lesion, one crop per context of the card (averaging over how much surrounding tissue
    is shown makes the call less sensitive to where the predicted outline falls); without one,
    or with ``input: image``, the whole image once. With ``input: both`` each crop is paired
    with the whole image (V = 2); without a lesion both views are the whole image. ``whole``:
    the image letterboxed at the crop size, when the caller has it (it is not free: ~0.5 ms)."""
    if whole is None and (settings.views == 2 or settings.input == "image" or mask is None
                          or not mask.any()):
        whole, _ = lesion_crop(image, None, settings.crop)
    if settings.input == "image" or mask is None or not mask.any():
        return _views(whole[None], whole, settings), None, 0
    contexts = settings.all_contexts
    crops, boxes = [], []
    for context in contexts:
        x, box = lesion_crop(image, mask, replace(settings.crop, context=context))
        crops.append(x)
        boxes.append(box)
    primary = contexts.index(settings.crop.context) if settings.crop.context in contexts else 0
    return _views(np.stack(crops), whole, settings), boxes[primary], primary


def _views(crops: np.ndarray, whole: np.ndarray | None, settings: ClassifierSettings
           ) -> np.ndarray:
    """[K, S, S] crops -> [K, V, S, S] float32: the crops alone, or each beside ``whole``."""
    if settings.views == 1:
        return crops[:, None].astype(np.float32)
    return np.stack([crops, np.broadcast_to(whole, crops.shape)], axis=1).astype(np.float32)


def classify(
    image: np.ndarray, mask: np.ndarray | None, models: Models, whole: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray, CropBox | None]:
    """(mean logit over the crops, the heatmap crop's CAM, that crop, its window or None when
    the whole image is used); ``whole`` as in :func:`classifier_inputs`."""
    x, box, primary = classifier_inputs(image, mask, models.settings, whole)
    logit, cam = models.classifier.run(None, {INPUT_NAME: x})[:2]
    logits = np.asarray(logit, dtype=np.float64).reshape(-1)
    return float(logits.mean()), np.asarray(cam)[primary, 0], x[primary, 0], box


def heatmap(
    cam: np.ndarray, box: CropBox | None, height: int, width: int, size: int
) -> np.ndarray:
    """The CAM's positive evidence scaled to [0, 1] on the original image's grid."""
    positive = np.maximum(np.nan_to_num(cam.astype(np.float32)), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    scaled = positive / peak if peak > 0 else np.zeros_like(positive)
    if box is not None:
        full = box.paste(_feathered(scaled, box.side), height, width)
    else:
        full = Letterbox(height, width, size).invert(resize(scaled, size, size, nearest=False))
    full = np.asarray(full, dtype=np.float32)
    return np.clip(full, 0.0, 1.0, out=full)


# the share of the crop's side over which the heatmap fades out towards the crop's edge
FEATHER = 0.15


def _feathered(cam: np.ndarray, side: int) -> np.ndarray:
    """The CAM on the crop's ``side`` x ``side`` grid, smooth (bicubic from the network's coarse
    grid) and fading to nothing at the crop's edge (a raised cosine over its outer FEATHER), so
    that it shows as a region of evidence rather than a square patch."""
    patch = np.clip(cv2.resize(cam.astype(np.float32), (side, side),
                               interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    ramp = np.ones(side, dtype=np.float32)
    width = max(1, round(FEATHER * side))
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width, dtype=np.float32) + 0.5) / width)
    ramp[:width], ramp[-width:] = edge, edge[::-1]
    return patch * ramp[:, None] * ramp[None, :]


def analyze(
    source: bytes | str | Path | np.ndarray | DecodedImage,
    models: Models,
    *,
    render_overlays: bool = True,
    max_pixels: int = MAX_PIXELS,
    trim_margins: bool = True,
    pane: str | None = None,
    frame: int | None = None,
    fill_colour: bool = True,
) -> Analysis:
    """Analyse one image: bytes of a file, a path, an array, or an already decoded image.
    ``trim_margins=False`` analyses the whole image, black frame and all (for studies).
    ``pane`` ("left" or "right"): the image is a dual-view capture, and that pane of it is
    analysed (a DICOM's two declared regions, else busdx.inference.scan_area.split_dual_view);
    the result describes the pane. A DICOM file's declared scan regions bound the scan area,
    and the black frame rule then runs inside them. ``frame``: which frame of a cine loop or a
    multi-page TIFF to analyse (busdx.inference.decode.decode; ignored for a decoded image).
    ``fill_colour=False`` leaves thin colour over the scan as it is (for studies; rule Y)."""
    clock = _Clock()
    decoded = (source if isinstance(source, DecodedImage)
               else decode(source, max_pixels, frame))
    declared = len(decoded.regions)
    regions = decoded.regions if trim_margins else ()
    where, located = None, None
    if pane is not None:
        if pane not in PANES:
            raise ValueError(f"pane must be one of {', '.join(PANES)}, not {pane!r}")
        decoded, where, located = _pane(decoded, regions, pane)
        regions = ()
    image = decoded.image
    h, w = image.shape
    clock.lap("decode")
    area = None
    if trim_margins:
        area = find_scan_area_within(image, bounding([r.area for r in regions]))
        if len(regions) == 1 and regions[0].pixel_spacing_mm is not None:
            decoded = replace(decoded, pixel_spacing_mm=regions[0].pixel_spacing_mm)
        if area.is_whole((h, w)):
            area = None
        elif located is None:
            located = FROM_REGIONS if regions else FROM_FRAME
    scan = area.crop(image) if area else image
    _check_content(scan, area is not None or pane is not None, decoded)
    colour = decoded.colour
    if colour is not None and area is not None:
        colour = area.crop(colour)
    colour_share = float(colour.mean()) if colour is not None else 0.0
    filled = None
    if fill_colour and colour_share > COLOUR_SHARE:
        filled = fill_thin_colour(scan, colour)
        if filled is not None:  # the picture shows what was analysed
            scan = filled
            image = image.copy()
            (area or ScanArea(0, h, 0, w)).crop(image)[...] = filled
    # a caution, not a gate: the analysis goes on whatever it says
    input_check = (check_image(scan, models.input_ranges, models.input_texture_long_side,
                               colour_share, filled is not None)
                   if models.input_ranges or colour_share > 0 else None)
    clock.lap("input_check")
    letterboxed = prepare(scan, models.segmenter_size)
    reading = read_segmenter(scan, models, letterboxed)
    mask = reading.mask
    if reading.appearance is not None:
        input_check = with_appearance(input_check, reading.appearance,
                                      models.appearance_threshold)
    clock.lap("segment")
    settings = models.settings
    # the segmenter's input is the whole view a classifier of the same size is given
    whole = letterboxed[0] if models.segmenter_size == settings.crop.size else None
    logit, cam, _, box = classify(scan, mask, models, whole)
    logit += settings.logit_shift
    probability = float(sigmoid(logit / settings.temperature))
    if not math.isfinite(probability):
        raise ValueError("the classifier returned a non-finite logit")
    clock.lap("classify")
    heat = heatmap(cam, box, *scan.shape, settings.crop.size)
    if area is not None:
        mask, heat = area.paste(mask, (h, w)), area.paste(heat, (h, w))
        if box is not None:
            box = replace(box, top=box.top + area.top, left=box.left + area.left)
    clock.lap("heatmap")
    lesion_found = bool(mask.any())
    withheld = lesion_found and bool(input_check and input_check.not_ultrasound)
    measurements = measure(mask, decoded.pixel_spacing_mm) if lesion_found else None
    clock.lap("measure")
    overlays = render(image, mask, heat) if render_overlays else None
    if render_overlays:
        clock.lap("render")
    return Analysis(
        probability=probability,
        # no outline, no call: the whole image's probability is kept for reference only
        label=(WITHHELD if withheld
               else ("malignant" if probability >= settings.threshold else "benign")
               if lesion_found else NO_LESION),
        threshold=settings.threshold,
        # a risk band grades a lesion: without one there is nothing to grade
        risk=(risk_band(min(max(probability, 0.0), 1.0)) if lesion_found and not withheld
              else None),
        logit=logit,
        temperature=settings.temperature,
        lesion_found=lesion_found,
        note=(WITHHELD_NOTE if withheld else "" if lesion_found
              else DISMISSED_NOTE if reading.outline_dismissed else NO_LESION_NOTE),
        presence=reading.presence,
        measurements=measurements,
        width=w,
        height=h,
        format=decoded.format,
        pixel_spacing_mm=decoded.pixel_spacing_mm,
        model_version=models.version,
        image=image,
        mask=mask,
        heatmap=heat,
        crop_box=box,
        overlays=overlays,
        timings_ms=clock.total(),
        input_check=input_check,
        scan_area=area,
        pane=where,
        scan_area_from=located,
        regions=declared,
        frame=decoded.frame,
        frames=decoded.frames,
        spacing_note=decoded.spacing_note,
    )


def _check_content(scan: np.ndarray, part: bool, decoded: DecodedImage) -> None:
    """BlankImage for a scan that cannot be analysed: a strip a few pixels wide, or one grey
    level nearly everywhere (an all-black, all-white or all-grey picture). A call on it would
    be the networks' guess about nothing. ``part``: the scan is a part of the image (a scan
    area or a pane), which the message says; a frame of a cine loop says which, and the answer
    carries the loop's frame count so that another frame can be chosen."""
    what = "the scan area or pane found" if part else "the image"
    loop = {}
    if decoded.frames > 1:
        what = f"frame {decoded.frame} of {decoded.frames}" + (" (its scan area or pane)"
                                                              if part else "")
        loop = {"frame": decoded.frame, "frames": decoded.frames}
    another = "; choose another frame" if loop else ""
    h, w = scan.shape
    if min(h, w) < MIN_SCAN_SIDE:
        raise BlankImage(f"{what} is {w}x{h} pixels: too small to hold a lesion (at least "
                         f"{MIN_SCAN_SIDE} pixels each way){another}", extra=loop)
    if is_blank(scan):
        raise BlankImage(f"{what} is blank (one grey level nearly everywhere): there is no "
                         f"scan to analyse{another}", extra=loop)


def _pane(decoded: DecodedImage, regions: tuple, pane: str
          ) -> tuple[DecodedImage, tuple[str, ScanArea], str | None]:
    """The pane of a dual-view capture, as an image of its own: the decoded pane, (side, where
    it is in the capture) and what located it. Two regions side by side declared by a DICOM
    file are the panes, gap or not; otherwise the black gap between the panes is looked for
    (inside the one declared region, if there is one)."""
    side = PANES.index(pane)
    spacing = decoded.pixel_spacing_mm
    if len(regions) == 2 and regions[0].area.right <= regions[1].area.left:
        area, located = regions[side].area, FROM_REGIONS
        spacing = regions[side].pixel_spacing_mm or spacing
    else:
        area = split_dual_view(decoded.image, bounding([r.area for r in regions]))[side]
        located = None
        if len(regions) == 1:
            spacing = regions[0].pixel_spacing_mm or spacing
    crop = np.ascontiguousarray(area.crop(decoded.image))
    colour = area.crop(decoded.colour) if decoded.colour is not None else None
    return (replace(decoded, image=crop, pixel_spacing_mm=spacing, regions=(), colour=colour),
            (pane, area), located)
