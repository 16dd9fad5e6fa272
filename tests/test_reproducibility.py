"""The bundled models reproduce their model card on the full test fold (runs where BUS-BRA is)."""

from __future__ import annotations

import pytest

from busdx.data.index import load_index
from busdx.data.splits import SplitConfig, make_split
from busdx.evaluation.model_card import load_card
from stand_in_models import REAL_MODELS, REAL_MODELS_MISSING, real_models_dir

pytestmark = pytest.mark.full_data


@pytest.fixture(scope="module")
def card():
    if real_models_dir() is None:
        pytest.skip(REAL_MODELS_MISSING)
    return load_card(REAL_MODELS / "model_card.json")


def test_segmenter_reproduces_its_card(busbra_root, card):
    from busdx.evaluation.segmentation import evaluate_segmenter

    section = card["segmenter"]["test"]
    result = evaluate_segmenter(busbra_root, REAL_MODELS / "segmenter.onnx", section["test_fold"])
    assert len(result.scores) == section["test_images"]
    assert round(result.mean_dice, 3) == round(section["dice"]["mean"], 3)


def test_classifier_reproduces_its_card_end_to_end(busbra_root, card):
    from busdx.evaluation.classification import evaluate_predictions, predict_records

    clf = card["classifier"]
    section = clf["test"]
    records = make_split(load_index(busbra_root), SplitConfig(test_fold=section.get("test_fold", 5))).test
    preds, empty = predict_records(records, REAL_MODELS, masks=section.get("masks", "predicted"))
    report = evaluate_predictions(preds, clf["temperature"], clf["threshold"], section["masks"], empty,
                                  reps=200)
    assert report.n == section["n"]
    for key in ("auc", "sensitivity", "specificity"):
        assert round(getattr(report, key), 3) == round(section[key], 3), key
