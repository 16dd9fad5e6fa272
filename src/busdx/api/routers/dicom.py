"""POST /api/analyze/dicom: a DICOM image in, its analysis and its results as DICOM objects out.

The same analysis as /api/analyze (pictures left out), with the measurement report (TID 1500)
and, when a lesion is found, the segmentation that ``busdx predict --dicom-out`` writes, each as
base64-encoded DICOM Part 10 bytes, ready to store in a PACS (STOW-RS).
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request

from busdx.api.access import audit
from busdx.api.routers.analyze import (
    ERROR_RESPONSES,
    OPENAPI_BODY,
    _decode_and_analyze,
    _receive,
    frame_asked,
)
from busdx.errors import BusdxError
from busdx.inference.dicom import is_dicom
from busdx.inference.errors import InputError, UnsupportedFormat

router = APIRouter(prefix="/api", tags=["analysis"])


def _analyse(data: bytes, models, max_pixels: int, pane: str | None, frame: int | None):
    from busdx.inference.dicom_results import dicom_files

    result = _decode_and_analyze(data, models, max_pixels, pane, frame, images="none")
    try:
        files = dicom_files(data, result)
    except BusdxError as err:  # the image analysed, but its header cannot be referenced
        raise InputError(f"no DICOM results: {err}") from err
    return result, files


@router.post(
    "/analyze/dicom",
    summary="Analyse one DICOM image and return the results as DICOM SR and SEG",
    description=(
        "The analysis of /api/analyze (without pictures) plus `sr`, a TID 1500 measurement "
        "report, and `seg`, a binary segmentation of the lesion on the image's grid (null "
        "when no lesion is found), both base64-encoded DICOM files that reference the "
        "uploaded image. `pane` and `frame` as for /api/analyze. 415 for an image that is not "
        "DICOM; 422 when the file lacks the study, series or instance identifiers results "
        "must reference. Decision support, not a diagnosis."
    ),
    responses=ERROR_RESPONSES,
    openapi_extra=OPENAPI_BODY,
)
async def analyze_dicom(
    request: Request,
    pane: Literal["left", "right"] | None = Query(None, description="as for /api/analyze"),
    frame: str | None = Query(None, description="as for /api/analyze"),
) -> dict[str, Any]:
    state = request.app.state
    chosen = frame_asked(frame)
    data = await _receive(request)
    if not is_dicom(data[:132]):
        raise UnsupportedFormat("DICOM results need a DICOM file (Part 10, with the DICM "
                                "preamble)")
    async with state.limiter:
        result, files = await anyio.to_thread.run_sync(
            partial(_analyse, data, state.models, state.limits.max_pixels, pane, chosen))
    del data
    audit(request, "/api/analyze/dicom", result.model_version, result.label)
    answer = result.to_json(images=False)
    answer["dicom"] = {
        "sr": base64.b64encode(files["_sr"]).decode("ascii"),
        "seg": base64.b64encode(files["_seg"]).decode("ascii") if "_seg" in files else None,
    }
    return answer
