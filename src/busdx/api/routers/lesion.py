"""POST /api/lesion: one reading of a lesion from its views, already analysed by /api/analyze.

The client sends back each view's served logit rather than the images again: the reading is the
mean of those logits under the card's temperature, called at the card's lesion threshold
(busdx.inference.lesion). Views analysed by other models than the ones loaded are refused, since
their logits are on another scale.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from busdx.api.access import audit
from busdx.api.schemas import LesionRequest, LesionResponse
from busdx.inference.lesion import ViewScore, read_lesion

router = APIRouter(prefix="/api", tags=["analysis"])


@router.post(
    "/lesion",
    summary="Read one lesion from several analysed views of it",
    description=(
        "Send the `logit`, `lesion_found` and `model_version` of each view of one lesion, as "
        "/api/analyze returned them (two orthogonal planes, typically), and `unusual` when its "
        "`input_check.outside` was not empty (and `not_ultrasound` when its first warning says it "
        "may not be a breast ultrasound), and its `measurements.longest_diameter` and "
        "`units` so that views of different sizes are noticed. Returns the lesion's "
        "calibrated probability, its call at the lesion threshold validated on BUS-BRA with "
        "both views, and its risk band; `views_disagree` (with a note) when the views differ "
        "more than any validation lesion's two views did, in probability or in size, and so "
        "may not show one lesion. Decision support, not a diagnosis."
    ),
    response_model=LesionResponse,
    responses={409: {"description": "No lesion reading in these models' card, or views "
                                     "analysed by other models"}},
)
def lesion(request: Request, body: LesionRequest) -> dict[str, Any]:
    models = request.app.state.models
    threshold = models.settings.lesion_threshold
    if threshold is None:
        raise HTTPException(409, "these models' card offers no lesion reading")
    stale = sorted({v.model_version for v in body.views} - {models.version})
    if stale:
        raise HTTPException(409, f"views analysed by other models ({', '.join(stale)}): analyse "
                                 f"them again with {models.version}")
    views = [ViewScore(v.logit, models.settings.temperature, v.lesion_found, v.model_version,
                       v.unusual, v.longest_diameter, v.units, v.not_ultrasound)
             for v in body.views]
    reading = read_lesion(views, threshold, models.settings.lesion_agreement)
    audit(request, "/api/lesion", models.version, reading.label)
    return reading.to_json()
