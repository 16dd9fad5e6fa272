"""One input of a batch, analysed into what ``busdx predict`` writes: the CSV row of each
view, the PNG files and what a lesion reading needs.

``analyse_input`` is the unit of work of every batch engine: the plain loop of ``busdx predict``
calls it in its own process, a Ray worker calls it on its node (busdx.inference.ray_batch), and
both hand back :class:`ViewResult` values that the command writes in input order. Outputs come
back as bytes rather than being written by the worker, so that a worker on another machine
needs no access to the output folders, and a worker that dies and is retried writes nothing
twice.

An input is a local path or, when fsspec is installed, a URL that it can open (``s3://``,
``gs://``, ``https://``...): it is read where it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from busdx.errors import BusdxError
from busdx.inference.decode import MAX_FILE_BYTES, InputError, read_file

log = logging.getLogger(__name__)

MEASUREMENT_COLUMNS = (
    "units",
    "area",
    "perimeter",
    "longest_diameter",
    "width",
    "height",
    "orientation",
    "circularity",
    "solidity",
    "ellipse_major",
    "ellipse_minor",
    "ellipse_angle_deg",
    "area_px",
)
COLUMNS = (
    ("path", "probability", "label", "threshold", "risk_band", "risk_text", "lesion_found")
    + MEASUREMENT_COLUMNS
    + ("image_width", "image_height", "pixel_spacing_mm", "scan_area", "scan_area_from",
       "regions", "frame", "frames", "model_version", "time_ms", "note")
    + ("input_unusual",)
    + ("error",)
)


@dataclass(frozen=True)
class BatchOptions:
    """How each input is analysed and what comes back of it."""

    dual_view: bool = False  # each input is a capture of two panes: a result per pane
    frame: int | None = None  # busdx.inference.decode.parse_frame
    masks: bool = False  # return the mask PNG
    overlays: bool = False  # return the outline and heatmap PNGs
    dicom: bool = False  # return a DICOM input's SR and SEG (busdx.inference.dicom_results)


@dataclass
class ViewResult:
    """One CSV row of ``busdx predict`` (one image, or one pane of a dual-view capture)."""

    source: str  # the input as given: a path or a URL
    view: str  # the row's path: the input, or input#pane
    stem_source: str  # what the output files are named after (<stem>-left.png for a pane)
    row: dict
    score: object | None = None  # busdx.inference.lesion.ViewScore, None when it failed
    pngs: dict[str, bytes] = field(default_factory=dict)  # suffix -> PNG: "", "_overlay"...
    dicom: dict[str, bytes] = field(default_factory=dict)  # suffix -> Part 10: "_sr", "_seg"
    not_dicom: bool = False  # DICOM results were asked for, but the input is no DICOM file
    dual_regions: bool = False  # a DICOM declaring two scans, read as one image
    loop: bool = False  # a file of several frames

    @property
    def failed(self) -> bool:
        return bool(self.row.get("error"))

    @property
    def unusual(self) -> bool:
        return bool(self.row.get("input_unusual"))

    @property
    def withheld(self) -> bool:
        """The image may not be a breast ultrasound and got no call (pipeline.WITHHELD)."""
        from busdx.inference.pipeline import WITHHELD

        return self.row.get("label") == WITHHELD


def is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def read_source(source: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a local file (read_file, with its checks) or of a URL (read with fsspec),
    at most ``max_bytes``."""
    if not is_url(source):
        return read_file(Path(source.removeprefix("file://")), max_bytes)
    try:
        import fsspec
    except ImportError as err:
        raise InputError("reading URLs needs fsspec (pip install fsspec, plus s3fs or gcsfs "
                         "for object stores)") from err
    try:
        with fsspec.open(source, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except (OSError, ValueError, ImportError) as err:
        raise InputError(f"cannot read {source}: {err}") from err
    if len(data) > max_bytes:
        raise InputError(f"over the limit of {max_bytes // 2**20} MB")
    return data


def fmt(value) -> str | float | int:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return round(value, 6)
    return value


def row_for(path, analysis) -> dict:
    row = {
        "path": str(path),
        "probability": analysis.probability,
        "label": analysis.label,
        "threshold": analysis.threshold,
        "risk_band": analysis.risk.name if analysis.risk else None,
        "risk_text": analysis.risk.text if analysis.risk else None,
        "lesion_found": analysis.lesion_found,
        "image_width": analysis.width,
        "image_height": analysis.height,
        "pixel_spacing_mm": (
            " ".join(f"{v:.6g}" for v in analysis.pixel_spacing_mm)
            if analysis.pixel_spacing_mm
            else ""
        ),
        # "left top width height" of the part analysed when a black frame was cut off
        "scan_area": (" ".join(str(v) for v in (analysis.scan_area.left, analysis.scan_area.top,
                                                analysis.scan_area.width,
                                                analysis.scan_area.height))
                      if analysis.scan_area else ""),
        # "ultrasound regions" (the DICOM's declared scans) or "black frame"; empty: neither
        "scan_area_from": analysis.scan_area_from or "",
        # the 2-D tissue scans a DICOM file declares (two side by side: a dual view)
        "regions": analysis.regions,
        # the frame analysed (from 1) of the file's frames (more than 1: a cine loop)
        "frame": analysis.frame,
        "frames": analysis.frames,
        "model_version": analysis.model_version,
        "time_ms": analysis.timings_ms.get("total"),
        # the analysis's note, and why the file's calibration was ignored if it was
        "note": "; ".join(n for n in (analysis.note, analysis.spacing_note) if n),
        # e.g. "texture low; contrast high": statistics outside the training images' ranges
        "input_unusual": analysis.input_check.outside_text if analysis.input_check else "",
        "error": "",
    }
    if analysis.measurements is not None:
        row.update(analysis.measurements.as_dict())
    return {key: fmt(row.get(key)) for key in COLUMNS}


def error_message(err: Exception) -> str:
    """What an error row says: the input's fault in its own words; anything else as an
    internal error, with its trace in the debug log."""
    from busdx.data.preprocess import ImageError

    if isinstance(err, (ImageError, BusdxError, OSError, ValueError)):
        return str(err) or type(err).__name__
    return f"internal error ({type(err).__name__}): the analysis failed"


def analyse_input(source: str, models, options: BatchOptions) -> list[ViewResult]:
    """Every view of one input, each a row; a view that cannot be analysed is an error row,
    never an exception (one file never stops a batch)."""
    from busdx.inference import overlay as ov
    from busdx.inference.decode import decode
    from busdx.inference.dicom_results import dicom_files
    from busdx.inference.lesion import ViewScore
    from busdx.inference.pipeline import analyze
    from busdx.inference.scan_area import PANES

    panes = PANES if options.dual_view else (None,)
    results = []
    data = None  # read once for both panes of a capture
    decoded = None
    name = Path(source.rstrip("/").rsplit("/", 1)[-1]) if is_url(source) else Path(source)
    for pane in panes:
        view = source if pane is None else f"{source}#{pane}"
        stem = name if pane is None else name.with_name(f"{name.stem}-{pane}.png")
        try:
            if data is None:
                data = read_source(source)
            if pane is not None and decoded is None:
                decoded = decode(data, frame=options.frame)
            analysis = analyze(data if pane is None else decoded, models,
                               render_overlays=False, pane=pane, frame=options.frame)
            pngs = {}
            if options.masks:
                pngs[""] = ov.mask_png(analysis.mask)
            if options.overlays:
                pictures = ov.draw(analysis.image, analysis.mask, analysis.heatmap)
                pngs["_overlay"] = ov.png_bytes(pictures["overlay"])
                pngs["_heatmap"] = ov.png_bytes(pictures["heatmap_overlay"])
            row = row_for(view, analysis)
            dicom, not_dicom = {}, False
            if options.dicom and analysis.format == "DICOM":
                try:
                    dicom = dicom_files(data, analysis)
                except BusdxError as err:  # the analysis stands; its row says why no files
                    row["note"] = "; ".join(filter(None, [row["note"],
                                                          f"no DICOM results: {err}"]))
            elif options.dicom:
                not_dicom = True
            results.append(ViewResult(
                source=source, view=view, stem_source=str(stem), row=row,
                score=ViewScore.of(analysis), pngs=pngs, dicom=dicom, not_dicom=not_dicom,
                dual_regions=pane is None and analysis.regions == 2,
                loop=pane in (None, PANES[0]) and analysis.frames > 1))
        except Exception as err:  # one file never stops the batch
            log.debug("failed: %s", view, exc_info=True)
            row = {key: "" for key in COLUMNS} | {"path": view, "error": error_message(err)}
            results.append(ViewResult(source=source, view=view, stem_source=str(stem), row=row))
    return results
