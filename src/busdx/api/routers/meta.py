"""Health and model information."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from busdx import DISCLAIMER, __version__

router = APIRouter(prefix="/api", tags=["meta"])
# the model card as a page to read, beside the web page (not under /api)
pages = APIRouter(tags=["meta"])
MODEL_CARD_MD = "MODEL_CARD.md"


@router.get("/health", summary="Liveness: the models are loaded and the service answers")
def health(request: Request) -> dict[str, Any]:
    models = request.app.state.models
    return {"status": "ok", "model_version": models.version, "busdx_version": __version__}


@router.get("/ready", summary="Readiness: the models are loaded and analyses can start")
def ready(request: Request) -> dict[str, Any]:
    state = request.app.state
    if getattr(state, "models", None) is None or getattr(state, "limiter", None) is None:
        raise HTTPException(503, "not ready: the models are still loading")
    waiting = state.limiter.statistics().tasks_waiting
    return {"status": "ready", "model_version": state.models.version,
            "analyses_running": state.limiter.borrowed_tokens, "analyses_waiting": waiting}


@pages.get("/metrics", summary="Prometheus metrics: requests, latency, errors, analyses by call",
           include_in_schema=True)
def metrics(request: Request) -> Response:
    body, kind = request.app.state.metrics.exposition()
    return Response(body, media_type=kind)


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
        "release": models.release.to_dict(),
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


def model_card_page(directory: Path) -> str | None:
    """The models' MODEL_CARD.md as a page of its own (tables kept, absolute paths replaced by
    <path> as in /api/model); None when the folder has none."""
    import markdown

    path = directory / MODEL_CARD_MD
    if not path.is_file():
        return None
    body = markdown.markdown(ABSOLUTE_PATH.sub("<path>", path.read_text(encoding="utf-8")),
                             extensions=["tables", "fenced_code"])
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>busdx model card ({escape(directory.name)})</title>"
        '<link rel="stylesheet" href="/app.css"></head>'
        '<body class="card-page"><p class="back"><a href="/">Back to the analysis</a> · '
        '<a href="/api/model">the card as JSON</a></p>'
        f'<p class="notice"><strong>Decision support, not a diagnosis.</strong> {escape(DISCLAIMER)}'
        f"</p><main class=\"card\">{body}</main></body></html>"
    )


@pages.get("/model-card", response_class=HTMLResponse, summary="The model card as a page")
def model_card(request: Request) -> str:
    page = request.app.state.model_card_page
    if page is None:
        raise HTTPException(404, f"these models come without a {MODEL_CARD_MD}: see /api/model")
    return page
