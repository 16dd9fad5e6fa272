"""Full-data check: re-evaluating the bundled ONNX models on fold 5 reproduces the card."""

from __future__ import annotations

from pathlib import Path

import pytest

from busdx.evaluation.model_card import load_card

MODELS = Path(__file__).resolve().parent.parent / "models"


def reevaluate(data_root: Path, models: Path = MODELS, masks: str | None = None) -> tuple:
    """(fresh report, the card's test section, fresh per-group results: per scanner, and per
    BI-RADS category with the comparison with the radiologists' BI-RADS) for the bundled
    models."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.classification import (
        by_group,
        evaluate_lesion_reading,
        evaluate_predictions,
        predict_records,
        reader_comparison,
    )

    card = load_card(models / "model_card.json").get("classifier", {})
    recorded = card.get("test")
    if recorded is None or not (models / "classifier.onnx").is_file():
        pytest.skip("no bundled classifier with an end-to-end test section in the card")
    if masks is None:
        masks = "gt" if recorded["masks"] == "ground truth" else "predicted"
    index = load_index(data_root)
    test = make_split(index, SplitConfig(test_fold=recorded.get("test_fold", 5))).test
    preds, empty = predict_records(test, models, masks)
    report = evaluate_predictions(preds, card["temperature"], card["threshold"], masks=masks,
                                  empty_masks=empty, reps=50,
                                  logit_offset=card.get("logit_offset", 0.0))
    groups = {"per_scanner": by_group(preds, [r.scanner for r in test], card["threshold"]),
              "per_birads": by_group(preds, [f"BI-RADS {r.birads}" for r in test],
                                     card["threshold"]),
              "readers": reader_comparison(preds, reps=50)}
    lesion = card.get("lesion_reading") or {}
    if lesion.get("test") and masks == "predicted":
        groups["lesion_reading"] = evaluate_lesion_reading(
            preds, [r.patient for r in test], card["temperature"], lesion["threshold"],
            masks, empty, reps=50, logit_offset=card.get("logit_offset", 0.0))
    return report, recorded, groups


@pytest.mark.full_data
@pytest.mark.slow
def test_bundled_classifier_reproduces_card_on_fold5(busbra_root):
    report, recorded, groups = reevaluate(busbra_root)
    assert report.n == recorded["n"]
    assert round(report.auc, 3) == round(recorded["auc"], 3)
    assert round(report.sensitivity, 3) == round(recorded["sensitivity"], 3)
    assert round(report.specificity, 3) == round(recorded["specificity"], 3)
    for section in ("per_scanner", "per_birads"):
        if section not in recorded:
            continue
        assert groups[section].keys() == recorded[section].keys()
        for name, fresh in groups[section].items():
            for key, value in recorded[section][name].items():
                assert fresh[key] == pytest.approx(value, abs=5e-4), (section, name, key)
    if recorded.get("readers"):
        for key in ("model_auc", "birads_auc", "difference"):
            assert groups["readers"][key] == pytest.approx(recorded["readers"][key], abs=5e-4)

    lesion = groups.get("lesion_reading")
    if lesion is not None:
        recorded_lesion = load_card(MODELS / "model_card.json")["classifier"]["lesion_reading"]
        for unit in ("image", "lesion"):
            for key in ("n", "auc", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
                assert lesion[unit][key] == pytest.approx(recorded_lesion["test"][unit][key],
                                                          abs=5e-4), (unit, key)


@pytest.mark.full_data
@pytest.mark.slow
def test_bundled_lesion_threshold_is_refitted_from_validation(busbra_root):
    """Rule X's lesion threshold and its validation figures come back from the bundled models."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.classification import fit_lesion_reading, predict_records

    card = load_card(MODELS / "model_card.json").get("classifier", {})
    recorded = card.get("lesion_reading")
    if not recorded:
        pytest.skip("the card has no lesion reading")
    val = make_split(load_index(busbra_root), SplitConfig(test_fold=5, seed=0)).val
    preds, _ = predict_records(val, MODELS, "predicted")
    fit = fit_lesion_reading(preds, [r.patient for r in val], card["temperature"],
                             card["calibration"]["target_sensitivity"])
    assert fit["threshold"] == pytest.approx(recorded["threshold"], abs=1e-6)
    assert fit["offered"] == recorded["offered"]
    for key in ("n", "lesions", "auc_image_reading", "auc_lesion_reading", "sensitivity",
                "specificity"):
        assert fit["validation"][key] == pytest.approx(recorded["validation"][key], abs=5e-4), key
