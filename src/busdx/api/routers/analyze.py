"""POST /api/analyze: one image in (multipart field ``file``), the full analysis out.

The upload stays in memory; nothing about it (name, content) is logged. Decoding problems are
the client's (4xx with a ``detail``); only a failure after a successful decode is a 500.
"""

from __future__ import annotations

import base64
import logging
import time
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from busdx.api.access import audit
from busdx.api.schemas import AnalyzeResponse
from busdx.data.preprocess import ImageError
from busdx.inference.decode import decode_bytes, parse_frame
from busdx.inference.errors import InputError
from busdx.inference.overlay import mask_png
from busdx.inference.pipeline import analyze as run_analysis

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["analysis"])

UPLOAD_FIELD = "file"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Empty file or malformed request"},
    408: {"description": "The upload took longer than the server allows"},
    413: {"description": "File over the byte limit, image over the pixel or decoded-size limit, "
                         "or a TIFF of too many pages"},
    415: {"description": "Not a supported image (PNG, JPEG, BMP, TIFF, DICOM)"},
    422: {"description": "Damaged or truncated image, no file field, no such frame, or nothing "
                         "to analyse (a blank image, a scan area or pane a few pixels wide)"},
    503: {"description": "Too many uploads arriving at once: try again (Retry-After)"},
}
# Answered, for the log's sake, to a client that left before its analysis started.
CLIENT_GONE = 499
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, BMP, TIFF (8/16 bit) or DICOM",
                        }
                    },
                }
            }
        },
    }
}


def _decode_and_analyze(data: bytes, models, max_pixels: int, pane: str | None = None,
                        frame: int | None = None, images: str = "all"):
    """Decode (every failure is the input's: a 4xx) then analyse; timings include the decode.
    ``images``: which pictures to draw (``all``, ``mask`` or ``none``)."""
    start = time.perf_counter()
    try:
        decoded = decode_bytes(data, max_pixels, frame)
    except ImageError:
        raise
    except Exception as err:  # a decoder failing on odd input is still the input's problem
        raise InputError("the image could not be decoded") from err
    decode_ms = round((time.perf_counter() - start) * 1000.0, 2)
    result = run_analysis(decoded, models, render_overlays=images == "all", pane=pane)
    result.timings_ms["decode"] = decode_ms
    result.timings_ms["total"] = round(result.timings_ms.get("total", 0.0) + decode_ms, 2)
    return result


@router.post(
    "/analyze",
    summary="Analyse one breast ultrasound image",
    description=(
        "Segments the lesion, gives the calibrated probability of malignancy, the call at the "
        "validated threshold, the risk band, measurements, a heatmap and overlays (base64 "
        "PNGs). With `pane=left` or `pane=right` the image is a dual-view capture (two "
        "planes of one lesion side by side) and that pane is analysed; read the lesion from "
        "both with /api/lesion. A cine loop (a multi-frame DICOM) or a multi-page TIFF is read "
        "at one frame, the first unless `frame` names another; `image.frames` says how many it "
        "holds. `images` chooses the pictures sent back: all six (the default), the mask only, "
        "or none (drawing and encoding them is about a tenth of an analysis, and they are "
        "most of an answer's bytes). Decision support, not a diagnosis."
    ),
    response_model=AnalyzeResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=OPENAPI_BODY,
)
async def analyze(
    request: Request,
    pane: Literal["left", "right"] | None = Query(
        None, description="analyse this pane of a dual-view capture (422 when the image has no "
                          "black gap between two panes near its middle)"),
    frame: str | None = Query(
        None, description="the frame of a cine loop or multi-page TIFF to analyse: a number from "
                          "1, a negative number counted from the end, 'first' or 'last' (422 "
                          "when the file has no such frame)"),
    images: Literal["all", "mask", "none"] = Query(
        "all", description="the pictures in `png`: all six, the mask only, or none"),
) -> dict[str, Any]:
    state = request.app.state
    chosen = frame_asked(frame)
    data = await _receive(request)
    # At most ``concurrency`` analyses at once, which bounds memory; each in a worker thread, so
    # /api/health keeps answering during an analysis.
    async with state.limiter:
        if await request.is_disconnected():  # waited for a slot and left: no one to answer
            log.info("a client left before its analysis started: not analysed")
            return JSONResponse({"detail": "client disconnected"}, status_code=CLIENT_GONE)
        result = await anyio.to_thread.run_sync(
            partial(_decode_and_analyze, data, state.models, state.limits.max_pixels, pane,
                    chosen, images))
    del data
    log.info(
        "analysed a %dx%d %s image in %.0f ms",
        result.width, result.height, result.format, result.timings_ms.get("total", 0.0),
    )
    audit(request, "/api/analyze", result.model_version, result.label)
    answer = result.to_json(images=images == "all")
    if images == "mask":
        answer["png"] = {"mask": base64.b64encode(mask_png(result.mask)).decode()}
    return answer


def frame_asked(frame: str | None) -> int | None:
    """The ``frame`` query as busdx.inference.decode.parse_frame reads it; a 422 otherwise."""
    try:
        return parse_frame(frame)
    except ValueError as err:
        raise InputError(str(err)) from err


async def _receive(request: Request) -> bytes:
    """The upload, within the app's limits on uploads received at once and on the time to send
    one (busdx.api.app.Limits)."""
    state = request.app.state
    limits = state.limits
    with anyio.move_on_after(limits.upload_seconds) as waiting:
        await state.upload_slots.acquire()  # nothing is read before: a waiting upload costs none
    if waiting.cancelled_caught:
        raise HTTPException(503, f"{limits.max_uploads} uploads have been arriving for "
                                 f"{limits.upload_seconds:g} s: try again in a few seconds",
                            headers={"Retry-After": "5"})
    try:
        with anyio.fail_after(limits.upload_seconds):
            return await read_upload_from(request, limits.max_upload_bytes)
    except TimeoutError as err:
        raise HTTPException(408, f"the upload took longer than {limits.upload_seconds:g} s") \
            from err
    finally:
        state.upload_slots.release()


async def read_upload_from(request: Request, limit: int) -> bytes:
    from busdx.api.upload import read_upload

    return await read_upload(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        UPLOAD_FIELD,
        limit,
    )
