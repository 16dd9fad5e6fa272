"""The shapes of /api/analyze's and /api/lesion's answers, for validation and the OpenAPI docs
at /docs; ``field_table`` writes docs/api.md's table of them from the same descriptions."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class RiskBandOut(BaseModel):
    name: str = Field(description="BI-RADS-aligned band: 3, 4A, 4B, 4C or 5")
    text: str = Field(description="the band in words, with its range of probabilities")
    low: float = Field(description="the band's lowest probability")
    high: float = Field(description="the band's highest probability")


class MeasurementsOut(BaseModel):
    units: str = Field(description="'mm' when the file carries a calibration, else 'px'")
    area: float = Field(description="in units squared")
    perimeter: float = Field(description="length of the outline (scikit-image's weights)")
    longest_diameter: float = Field(description="maximum Feret diameter")
    width: float = Field(description="extent along the image's x axis (the skin line)")
    height: float = Field(description="extent along the image's y axis (depth)")
    orientation: str = Field(description="'parallel' (wider than tall) or 'not parallel'")
    circularity: float = Field(description="4 pi area / perimeter^2: 1 for a disk, lower for "
                                           "irregular margins")
    solidity: float = Field(description="area / convex hull area: lower for lobulated or "
                                        "spiculated margins")
    ellipse_major: float = Field(description="major axis of the ellipse with the lesion's "
                                             "second moments")
    ellipse_minor: float = Field(description="its minor axis")
    ellipse_angle_deg: float = Field(description="its major axis's angle from the horizontal, "
                                                 "counter-clockwise as displayed, in [0, 180)")
    area_px: int = Field(description="the lesion's pixel count")


class ScanAreaOut(BaseModel):
    top: int = Field(description="first row, in the file's pixels")
    left: int = Field(description="first column, in the file's pixels")
    width: int = Field(description="in pixels")
    height: int = Field(description="in pixels")


class PaneOut(ScanAreaOut):
    side: str = Field(description="left or right")


class ImageInfo(BaseModel):
    width: int = Field(description="of the image (or pane) analysed, in pixels")
    height: int = Field(description="of the image (or pane) analysed, in pixels")
    format: str = Field(description="PNG, JPEG, BMP, TIFF or DICOM")
    pixel_spacing_mm: list[float] | None = Field(description="(row, column) mm per pixel")
    scan_area: ScanAreaOut | None = Field(
        None, description="the part analysed when the DICOM's declared regions or a black "
        "frame bounded the scan (null: the whole image)")
    pane: PaneOut | None = Field(
        None, description="with ?pane=: the pane analysed, in the capture's pixels (width and "
        "height above are the pane's)")
    scan_area_from: str | None = Field(
        None, description="what located the scan area or the pane: 'ultrasound regions' (the "
        "DICOM file's SequenceOfUltrasoundRegions) or 'black frame' (a black frame around the "
        "scan); null when the whole image was analysed")
    regions: int = Field(
        0, description="how many 2-D tissue regions the DICOM file declares; two side by side "
        "make a dual-view capture, to be read with ?pane=left and ?pane=right")
    frame: int = Field(
        1, description="the frame analysed, counted from 1 (choose it with ?frame=)")
    frames: int = Field(
        1, description="how many frames the file holds: more than 1 for a DICOM cine loop or a "
        "multi-page TIFF, of which one frame is analysed")
    pixel_spacing_note: str | None = Field(
        None, description="when the DICOM file declares a pixel size that no ultrasound image "
        "has (zero, negative, not finite, under 0.001 mm or over 10 mm), or a PixelSpacing that "
        "is not two numbers: why it was ignored. pixel_spacing_mm is then null and the "
        "measurements are in pixels")


class Pngs(BaseModel):
    """The mask is at the input's size; the pictures for display at most 1600 px on the longer
    side (the input's size for smaller images)."""

    image: str | None = Field(None, description="base64 PNG: the grayscale image analysed")
    mask: str = Field(description="base64 PNG: lesion mask, 0 and 255, at the input's size")
    outline: str | None = Field(
        None, description="base64 PNG: transparent layer with the lesion outline")
    heatmap: str | None = Field(None, description="base64 PNG: transparent heatmap layer")
    overlay: str | None = Field(None, description="base64 PNG: image with the outline")
    heatmap_overlay: str | None = Field(None, description="base64 PNG: image with the heatmap")


class InputCheckOut(BaseModel):
    statistics: dict[str, float] = Field(
        description="brightness, contrast and texture of the scan area (see the model card), "
        "and `appearance` (the learned check's distance) when the release has one")
    outside: dict[str, str] = Field(
        description="each statistic outside the training images' range: 'low' or 'high'")
    warnings: list[str] = Field(description="one sentence per statistic outside its range")
    colour: float = Field(
        0.0, description="share of the scan's pixels in colour (a Doppler or elastography "
        "overlay, say); above 0.01 it is in outside as 'colour': 'high', with a warning")
    colour_filled: bool = Field(
        False, description="the colour was thin (colour flow) and was filled in from the grey "
        "around it before the analysis; solid colour (an elastography map) is not filled")


class AnalyzeResponse(BaseModel):
    probability: float = Field(description="calibrated probability of malignancy")
    label: str = Field(description="'benign' or 'malignant' at the threshold; 'no lesion' when "
                       "the segmenter outlined none: then no call is made, and the probability "
                       "is the whole image's, for reference only; 'call withheld' when a lesion "
                       "was outlined but the image may not be a breast ultrasound at all (the "
                       "first of `input_check.warnings` says so): then no call and no band are "
                       "given, and the rest is for reference only")
    threshold: float = Field(description="the validated threshold the call is made at")
    risk_band: RiskBandOut | None = Field(
        description="the probability's BI-RADS-aligned band (an aid to reading it, not a BI-RADS "
                    "assessment); null when no lesion is found (a band grades a lesion) or "
                    "the call is withheld")
    lesion_found: bool = Field(description="whether the segmenter outlined a lesion; false: the "
                                           "probability is the whole image's, less reliable")
    presence: float | None = Field(
        default=None, description="the lesion-presence check's logit that the image shows a "
        "lesion at all (below the release's threshold: no lesion is reported, whatever the "
        "outline); null when the release has no such check")
    logit: float = Field(description="the served logit: probability = sigmoid(logit / "
                                     "temperature); what /api/lesion averages over views")
    temperature: float = Field(description="the calibration's temperature")
    note: str = Field(description="what the reader must know (no lesion found, say); empty "
                                  "when nothing")
    heatmap_shown: bool = Field(description="whether the heatmap has anything to draw (evidence "
                                            "of at least 0.1 of its peak); false: an empty layer")
    input_check: InputCheckOut | None = Field(
        description="is the image like the training images? None when the card has no ranges")
    measurements: MeasurementsOut | None = Field(
        description="of the outlined lesion; null when no lesion was found")
    image: ImageInfo = Field(description="the file and the part of it analysed")
    timings_ms: dict[str, float] = Field(description="milliseconds per stage of the analysis, "
                                                     "and the total")
    model_version: str = Field(description="the models' version and their files' fingerprint")
    busdx_version: str = Field(description="the busdx release that answered")
    disclaimer: str = Field(description="decision support, not a diagnosis")
    png: Pngs | None = Field(None, description="the pictures ?images= asked for: all six by "
                                               "default; with images=mask the others are null; "
                                               "null with images=none")


# A served logit is a few tens at most; far beyond, the mean of views would overflow.
MAX_ABS_LOGIT = 1000.0


class LesionView(BaseModel):
    logit: float = Field(allow_inf_nan=False, ge=-MAX_ABS_LOGIT, le=MAX_ABS_LOGIT,
                         description="the view's `logit` from /api/analyze")
    lesion_found: bool = Field(description="the view's `lesion_found` from /api/analyze")
    model_version: str = Field(max_length=64,
                               description="the view's `model_version` from /api/analyze")
    unusual: bool = Field(False, description="whether the view's `input_check.outside` was not "
                                             "empty (a caution)")
    longest_diameter: float | None = Field(
        None, allow_inf_nan=False, gt=0, le=1e6,
        description="the view's `measurements.longest_diameter` (null when no lesion was found)")
    units: Literal["mm", "px"] | None = Field(
        None, description="the view's `measurements.units`")
    not_ultrasound: bool = Field(
        False, description="whether the view may not be a breast ultrasound at all (the first "
        "of its `input_check.warnings` says so): then the lesion's call is withheld")


class LesionRequest(BaseModel):
    views: list[LesionView] = Field(min_length=1, max_length=16,
                                    description="the analysed views of one lesion")


class LesionResponse(BaseModel):
    probability: float = Field(description="calibrated probability of malignancy of the lesion")
    label: str = Field(description="'benign' or 'malignant' at the lesion threshold; 'no "
                       "lesion' when no view shows one: then no call is made; 'call withheld' "
                       "when a view may not be a breast ultrasound at all")
    threshold: float = Field(description="the lesion threshold (validated with both views)")
    risk_band: RiskBandOut | None = Field(
        description="the lesion probability's BI-RADS-aligned band; null when no view shows a "
                    "lesion or the call is withheld")
    logit: float = Field(description="mean of the views' logits")
    views: int = Field(description="how many views were read")
    views_without_lesion: int = Field(description="views in which no lesion was found (their "
                                                  "logit is the whole image's)")
    views_unusual: int = Field(0, description="views sent with `unusual` true")
    views_not_ultrasound: int = Field(0, description="views sent with `not_ultrasound` true")
    views_disagree: bool = Field(
        False, description="the views differ more than any validation lesion's two views did "
        "(served logits, or longest diameters in one unit) and may not show one lesion: the "
        "note says how; a caution, the reading is still given")
    note: str = Field(description="what the reader must know about this reading; empty when "
                                  "nothing")
    model_version: str = Field(description="the models' version the views were analysed by")
    busdx_version: str = Field(description="the busdx release that answered")
    disclaimer: str = Field(description="decision support, not a diagnosis")


def _nested(annotation) -> type[BaseModel] | None:
    """The model a field holds (directly, or as ``Model | None``), if any."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        rows.append((f"{prefix}{name}", field.description or ""))
        inner = _nested(field.annotation)
        if inner is not None:
            rows += _rows(inner, f"{prefix}{name}.")
    return rows


TABLE_BEGIN, TABLE_END = "<!-- response fields: begin -->", "<!-- response fields: end -->"


def field_table() -> str:
    """docs/api.md's table of every field of both answers, from the descriptions above."""
    lines = [TABLE_BEGIN]
    for title, model in (("/api/analyze", AnalyzeResponse), ("/api/lesion", LesionResponse)):
        lines += ["", f"| {title} field | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {text.replace('|', '/')} |" for name, text in _rows(model)]
    return "\n".join(lines + ["", TABLE_END])


def write_field_table(path: str | Path) -> None:
    """Replace the table between its markers in ``path`` (docs/api.md)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    path.write_text(text[:start] + field_table() + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m busdx.api.schemas docs/api.md
    import sys

    write_field_table(sys.argv[1])
