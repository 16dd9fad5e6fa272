"""Full tier: the bundled models reproduce the numbers their card publishes, from fold 5 scored
once per run (the ``fold5`` and ``fold5_segmenter`` fixtures in conftest.py) and from the
validation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from busdx.evaluation.model_card import load_card

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def card() -> dict:
    return load_card(MODELS)


def test_bundled_classifier_reproduces_card_on_fold5(fold5, card):
    from busdx.evaluation.classification import (
        by_group,
        evaluate_lesion_reading,
        evaluate_predictions,
        reader_comparison,
    )

    clf = card["classifier"]
    recorded = clf["test"]
    assert recorded["masks"] == "predicted"  # the fixture scores fold 5 as served
    preds, records = fold5.predictions, fold5.records
    report = evaluate_predictions(preds, clf["temperature"], clf["threshold"], masks="predicted",
                                  empty_masks=fold5.empty_masks, reps=50,
                                  logit_offset=clf.get("logit_offset", 0.0))
    assert report.n == recorded["n"]
    assert fold5.empty_masks == recorded["empty_masks"]
    for key in ("auc", "sensitivity", "specificity"):
        assert round(getattr(report, key), 3) == round(recorded[key], 3), key
    for key in ("tp", "fp", "tn", "fn"):
        assert getattr(report, key) == recorded[key], key

    groups = {"per_scanner": by_group(preds, [r.scanner for r in records], clf["threshold"]),
              "per_birads": by_group(preds, [f"BI-RADS {r.birads}" for r in records],
                                     clf["threshold"])}
    for section in ("per_scanner", "per_birads"):
        assert groups[section].keys() == recorded[section].keys()
        for name, fresh in groups[section].items():
            for key, value in recorded[section][name].items():
                assert fresh[key] == pytest.approx(value, abs=5e-4), (section, name, key)
    readers = reader_comparison(preds, reps=50)
    for key in ("model_auc", "birads_auc", "difference"):
        assert readers[key] == pytest.approx(recorded["readers"][key], abs=5e-4)

    lesion_card = clf["lesion_reading"]
    lesion = evaluate_lesion_reading(preds, [r.patient for r in records], clf["temperature"],
                                     lesion_card["threshold"], "predicted", fold5.empty_masks,
                                     reps=50, logit_offset=clf.get("logit_offset", 0.0))
    for unit in ("image", "lesion"):
        for key in ("n", "auc", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
            assert lesion[unit][key] == pytest.approx(lesion_card["test"][unit][key],
                                                      abs=5e-4), (unit, key)


def test_bundled_segmenter_reproduces_card_on_fold5(fold5_segmenter, card):
    recorded = card["segmenter"]["test"]
    result = fold5_segmenter
    assert len(result.scores) == recorded["test_images"]
    assert result.section["test_images"] == recorded["test_images"]
    for metric in ("dice", "iou"):
        assert round(result.section[metric]["mean"], 3) == round(recorded[metric]["mean"], 3)
        served = result.section["postprocessed"][metric]["mean"]
        assert round(served, 3) == round(recorded["postprocessed"][metric]["mean"], 3), metric


def test_bundled_lesion_threshold_is_refitted_from_validation(busbra_root, study_baseline, card):
    """The lesion reading's threshold and its validation figures come back from the bundled
    models' served analyses of the validation images (shared with the studies: their logits are
    the evaluation's, bit for bit)."""
    from _runner import validation_records

    from busdx.evaluation.classification import Prediction, fit_lesion_reading, scored_logit
    from busdx.training.calibration import calibrate

    clf = card["classifier"]
    recorded = clf["lesion_reading"]
    val = validation_records(str(busbra_root))
    preds = []
    for r in val:
        analysis = study_baseline.analysis(r)
        # as the evaluation scores it: an image without a lesion found gets no call
        z = scored_logit(analysis.logit, analysis.lesion_found)
        preds.append(Prediction(r.id, r.patient, r.label, r.birads, z,
                                float(calibrate(z, clf["temperature"]))))
    fit = fit_lesion_reading(preds, [r.patient for r in val], clf["temperature"],
                             clf["calibration"]["target_sensitivity"])
    assert fit["threshold"] == pytest.approx(recorded["threshold"], abs=1e-6)
    assert fit["offered"] == recorded["offered"]
    for key in ("n", "lesions", "auc_image_reading", "auc_lesion_reading", "sensitivity",
                "specificity"):
        assert fit["validation"][key] == pytest.approx(recorded["validation"][key], abs=5e-4), key
