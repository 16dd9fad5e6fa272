"""The shapes of /api/analyze's and /api/lesion's answers, for validation and the OpenAPI docs
at /docs."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RiskBandOut(BaseModel):
    name: str = Field(description="BI-RADS-aligned band: 3, 4A, 4B, 4C or 5")
    text: str
    low: float
    high: float


class MeasurementsOut(BaseModel):
    units: str = Field(description="'mm' when the file carries a calibration, else 'px'")
    area: float = Field(description="in units squared")
    perimeter: float
    longest_diameter: float = Field(description="maximum Feret diameter")
    width: float
    height: float
    orientation: str = Field(description="'parallel' (wider than tall) or 'not parallel'")
    circularity: float
    solidity: float
    ellipse_major: float
    ellipse_minor: float
    ellipse_angle_deg: float
    area_px: int


class ScanAreaOut(BaseModel):
    top: int
    left: int
    width: int
    height: int


class PaneOut(ScanAreaOut):
    side: str = Field(description="left or right")


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str
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

    image: str = Field(description="base64 PNG: the grayscale image analysed")
    mask: str = Field(description="base64 PNG: lesion mask, 0 and 255")
    outline: str = Field(description="base64 PNG: transparent layer with the lesion outline")
    heatmap: str = Field(description="base64 PNG: transparent heatmap layer")
    overlay: str = Field(description="base64 PNG: image with the outline")
    heatmap_overlay: str = Field(description="base64 PNG: image with the heatmap")


class InputCheckOut(BaseModel):
    statistics: dict[str, float] = Field(
        description="brightness, contrast and texture of the scan area (see the model card)")
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
    label: str = Field(description="'benign' or 'malignant' at the threshold")
    threshold: float
    risk_band: RiskBandOut
    lesion_found: bool
    logit: float = Field(description="the served logit: probability = sigmoid(logit / "
                                     "temperature); what /api/lesion averages over views")
    temperature: float
    note: str
    input_check: InputCheckOut | None = Field(
        description="is the image like the training images? None when the card has no ranges")
    measurements: MeasurementsOut | None
    image: ImageInfo
    timings_ms: dict[str, float]
    model_version: str
    busdx_version: str
    disclaimer: str
    png: Pngs


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


class LesionRequest(BaseModel):
    views: list[LesionView] = Field(min_length=1, max_length=16,
                                    description="the analysed views of one lesion")


class LesionResponse(BaseModel):
    probability: float = Field(description="calibrated probability of malignancy of the lesion")
    label: str = Field(description="'benign' or 'malignant' at the lesion threshold")
    threshold: float = Field(description="the lesion threshold (validated with both views)")
    risk_band: RiskBandOut
    logit: float = Field(description="mean of the views' logits")
    views: int
    views_without_lesion: int
    views_unusual: int = Field(0, description="views sent with `unusual` true")
    note: str
    model_version: str
    busdx_version: str
    disclaimer: str
