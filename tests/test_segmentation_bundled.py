"""The bundled segmenter reproduces the fold-5 numbers its model card reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from busdx.evaluation.model_card import load_card

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.full_data
@pytest.mark.slow
def test_bundled_segmenter_reproduces_card_dice(busbra_root):
    from busdx.evaluation.segmentation import evaluate_segmenter

    model, card = MODELS / "segmenter.onnx", load_card(MODELS / "model_card.json")
    test = card.get("segmenter", {}).get("test")
    if not model.is_file() or not test:
        pytest.skip("no bundled segmenter with test results")
    result = evaluate_segmenter(str(busbra_root), model, test_fold=test["test_fold"])
    assert result.section["test_images"] == test["test_images"]
    assert round(result.section["dice"]["mean"], 3) == round(test["dice"]["mean"], 3)
    assert round(result.section["iou"]["mean"], 3) == round(test["iou"]["mean"], 3)
