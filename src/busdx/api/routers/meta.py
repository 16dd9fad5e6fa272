"""Health and model information."""

from __future__ import annotations

import re
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
        "card": request.app.state.served_card,
    }


# How the models were made on a build machine: commands, checkpoints and run folders. They say
# nothing a user of the served models needs and can name the machine's paths.
BUILD_KEYS = frozenset({"command", "commands", "checkpoint", "checkpoints", "run", "runs",
                        "new_runs", "recovered_from", "candidates", "kept", "left_out", "graph"})
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/[\w.-]+){2,}|[A-Za-z]:\\[^\s]*")


def served_card(card: Any) -> Any:
    """The model card as /api/model serves it: without the BUILD_KEYS records, and with any
    absolute path left in its text replaced by <path>."""
    if isinstance(card, dict):
        return {k: served_card(v) for k, v in card.items() if k not in BUILD_KEYS}
    if isinstance(card, list):
        return [served_card(v) for v in card]
    if isinstance(card, str):
        return ABSOLUTE_PATH.sub("<path>", card)
    return card
