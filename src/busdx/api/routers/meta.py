"""Health and model information."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from busdx import DISCLAIMER, __version__

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/health", summary="Liveness: the models are loaded and the service answers")
def health(request: Request) -> dict[str, Any]:
    models = request.app.state.models
    return {"status": "ok", "model_version": models.version, "busdx_version": __version__}


@router.get("/model", summary="The model card: training data, validation, threshold, limits")
def model(request: Request) -> dict[str, Any]:
    models = request.app.state.models
    limits = request.app.state.limits
    return {
        "model_version": models.version,
        "busdx_version": __version__,
        "threshold": models.settings.threshold,
        "temperature": models.settings.temperature,
        "logit_shift": models.settings.logit_shift,
        "classifier_input": models.settings.input,
        "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels},
        "disclaimer": DISCLAIMER,
        "card": models.card,
    }
