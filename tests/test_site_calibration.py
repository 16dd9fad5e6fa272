"""Site recalibration: the refit's arithmetic, the out-of-fold estimate, the copied models as the
product serves them, and the CLI's refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from busdx.cli.main import main
from busdx.evaluation.card import render_model_card
from busdx.evaluation.classification import Prediction
from busdx.evaluation.evidence import load_records
from busdx.evaluation.model_card import load_card
from busdx.evaluation.site import (
    MIN_PER_CLASS,
    SiteCalibrationError,
    fit_site_calibration,
    write_site_models,
)
from busdx.numeric import sigmoid
from busdx.release import load_release
from busdx.training.calibration import expected_calibration_error
from stand_in_models import build_stand_in_models, real_models_dir
from tiers import threads


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return real_models_dir() or build_stand_in_models(tmp_path_factory.mktemp("models"))


def _site(n_pos: int = 60, n_neg: int = 140, offset: float = 1.5, seed: int = 0,
          images_per_patient: int = 2) -> list[Prediction]:
    """A site whose logits rank well but run ``offset`` too high: the bundled threshold calls
    too many benign lesions there."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    logits = 2.0 * (labels - 0.5) * 2.0 + rng.normal(0, 1.5, len(labels)) + offset
    return [Prediction(f"i{i}", f"p{i // images_per_patient}-{y}", int(y), 0, float(z), 0.0)
            for i, (y, z) in enumerate(zip(labels, logits, strict=True))]


def test_the_refit_keeps_the_target_and_its_shift_reproduces_platt():
    preds = _site()
    fit = fit_site_calibration(preds, temperature=1.2, logit_shift=0.3, threshold=0.3,
                               target_sensitivity=0.9)
    z = np.array([p.logit for p in preds])
    y = np.array([p.label for p in preds])
    # the card's form, sigmoid((z_graph + shift) / T), is Platt's sigmoid(a z + b) on the served
    # logit z = z_graph + old shift
    graph = z - 0.3
    assert np.allclose(sigmoid((graph + fit.logit_shift) / fit.temperature),
                       sigmoid(fit.platt_a * z + fit.platt_b))
    assert fit.in_sample.sensitivity >= 0.9
    assert (fit.n, fit.cancers, fit.benign) == (200, 60, 140)
    # every image is called once out of fold and once as shipped
    for point in (fit.out_of_fold, fit.shipped, fit.in_sample):
        assert point.tp + point.fn == 60 and point.tn + point.fp == 140
    # the offset site: as shipped, benign lesions are over-called; the refit clears more of them
    assert fit.shipped.specificity < fit.out_of_fold.specificity
    shipped = sigmoid(z / 1.2) >= 0.3
    assert fit.shipped.fp == int((shipped & (y == 0)).sum())
    lo, hi = fit.to_dict()["out_of_fold"]["sensitivity_ci"]
    assert lo <= fit.out_of_fold.sensitivity <= hi
    # the out-of-fold probabilities are the ones its counts were called from, image by image
    oof = np.array(fit.out_of_fold_probabilities)
    assert len(oof) == 200 and "out_of_fold_probabilities" not in fit.to_dict()
    assert fit.out_of_fold.ece == pytest.approx(expected_calibration_error(oof, y))


def test_out_of_fold_keeps_a_patients_images_together():
    # one patient's images called by a fit that saw their other image would flatter the
    # estimate: with patient folds, changing the pairing changes the folds, not the fit
    a = fit_site_calibration(_site(images_per_patient=1), temperature=1.0, logit_shift=0.0,
                             threshold=0.5)
    b = fit_site_calibration(_site(images_per_patient=4), temperature=1.0, logit_shift=0.0,
                             threshold=0.5)
    assert (a.platt_a, a.threshold) == (b.platt_a, b.threshold)
    assert a.out_of_fold.tp + a.out_of_fold.fn == b.out_of_fold.tp + b.out_of_fold.fn


def test_too_few_images_or_no_ranking_is_refused():
    with pytest.raises(SiteCalibrationError, match=f"at least {MIN_PER_CLASS}"):
        fit_site_calibration(_site(n_pos=MIN_PER_CLASS - 1), temperature=1.0, logit_shift=0.0,
                             threshold=0.5)
    reversed_site = [Prediction(p.id, p.patient, p.label, 0, -p.logit, 0.0) for p in _site()]
    with pytest.raises(SiteCalibrationError, match="do not rank"):
        fit_site_calibration(reversed_site, temperature=1.0, logit_shift=0.0, threshold=0.5)


def test_the_copy_serves_the_refit_and_the_source_is_untouched(models_dir, fixtures_root,
                                                               tmp_path):
    from busdx.data.index import load_index
    from busdx.inference.models import Models
    from busdx.inference.pipeline import analyze

    source = tmp_path / "bundled"
    shutil.copytree(models_dir, source)
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    bundled = Models.load(source, threads=1)
    fit = fit_site_calibration(_site(), temperature=bundled.settings.temperature,
                               logit_shift=bundled.settings.logit_shift,
                               threshold=bundled.settings.threshold)
    out = tmp_path / "site"
    write_site_models(source, out, fit, {"data": "somewhere", "from_version": bundled.version})
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == before
    site = Models.load(out, threads=1)
    assert site.settings.threshold == pytest.approx(fit.threshold)
    assert site.settings.logit_shift == pytest.approx(fit.logit_shift)
    assert site.release.name == "site recalibration" and site.version != bundled.version
    # the lesion threshold was fitted under the bundled calibration: the copy does not offer it
    assert site.settings.lesion_threshold is None
    if bundled.settings.lesion_threshold is not None:
        assert load_card(out)["classifier"][
            "site_calibration"]["lesion_reading_dropped"]
    image = load_index(fixtures_root).records[0].image_path
    a, b = analyze(image, bundled, render_overlays=False), analyze(image, site,
                                                                   render_overlays=False)
    assert b.logit == pytest.approx(a.logit - bundled.settings.logit_shift + fit.logit_shift)
    assert b.probability == pytest.approx(1 / (1 + math.exp(-b.logit / fit.temperature)))
    assert b.label == ("malignant" if b.probability >= fit.threshold else "benign")
    card = load_card(out)
    assert card["classifier"]["site_calibration"]["bundled"]["threshold"] == pytest.approx(
        bundled.settings.threshold)
    rendered = render_model_card(load_release(out), load_records(out / "evidence"))
    assert (out / "MODEL_CARD.md").read_text() == rendered
    assert "## Site recalibration" in rendered and "refitted on 200 images of one site" in rendered
    assert "fitted on BUS-BRA validation patients; a different" not in rendered
    with pytest.raises(SiteCalibrationError, match="not an empty folder"):
        write_site_models(source, out, fit, {})
    # recalibrating the copy again keeps the BUS-BRA operating point as the bundled one
    again = fit_site_calibration(_site(offset=-1.0), temperature=site.settings.temperature,
                                 logit_shift=site.settings.logit_shift,
                                 threshold=site.settings.threshold)
    write_site_models(out, tmp_path / "again", again, {})
    twice = load_card(tmp_path / "again")
    record = twice["classifier"]["site_calibration"]
    assert record["bundled"] == card["classifier"]["site_calibration"]["bundled"]
    assert record["replaced"]["threshold"] == pytest.approx(fit.threshold)
    assert twice["version"] != card["version"]


def test_the_cli_keeps_the_evaluation_when_the_site_is_too_small(fixtures_root, models_dir,
                                                                  tmp_path):
    from busdx.data.index import load_index

    records = load_index(fixtures_root).records
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label,patient\n" + "".join(
        f"{r.image_path},{r.pathology},{r.patient}\n" for r in records))
    out, site = tmp_path / "out", tmp_path / "site"
    rc = main(["evaluate", "external", "--data", str(tmp_path), "--labels", str(labels),
               "--out", str(out), "--models", str(models_dir), "--reps", "20",
               "--recalibrate", str(site)])
    assert rc == 2  # refused, with the reason ...
    report = json.loads((out / "external.json").read_text())
    assert f"at least {MIN_PER_CLASS}" in report["site_calibration"]["error"]
    assert report["classification"]["tp"] is not None  # ... and the evaluation is kept
    assert not site.exists() or not any(site.iterdir())
    # a non-empty target is refused before any image is analysed
    site.mkdir(exist_ok=True)
    (site / "keep.txt").write_text("mine")
    out2 = tmp_path / "out2"
    rc = main(["evaluate", "external", "--data", str(tmp_path), "--labels", str(labels),
               "--out", str(out2), "--models", str(models_dir), "--recalibrate", str(site)])
    assert rc == 2 and not out2.exists() and (site / "keep.txt").read_text() == "mine"


def test_the_help_names_the_minimum_the_refit_enforces(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "external", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"at least {MIN_PER_CLASS} malignant and {MIN_PER_CLASS} benign images" in help_text


@pytest.mark.full_data
def test_recalibrating_on_busbra_images_end_to_end(busbra_root, tmp_path):
    """A site of 40 malignant and 40 benign BUS-BRA test-fold images through the CLI: the copy
    loads, its card renders, and the out-of-fold counts cover every image."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.inference.models import Models

    models = Path(__file__).resolve().parent.parent / "models"
    test = make_split(load_index(busbra_root), SplitConfig(test_fold=5)).test
    chosen = [r for r in test if r.label][:40] + [r for r in test if not r.label][:40]
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label,patient\n" + "".join(
        f"{r.image_path},{r.pathology},{r.patient}\n" for r in chosen))
    out, site = tmp_path / "out", tmp_path / "site"
    rc = main(["evaluate", "external", "--data", str(tmp_path), "--labels", str(labels),
               "--out", str(out), "--models", str(models), "--reps", "20", "--threads", str(threads()),
               "--recalibrate", str(site)])
    assert rc == 0
    fit = json.loads((out / "external.json").read_text())["site_calibration"]
    oof = fit["out_of_fold"]
    assert oof["tp"] + oof["fn"] == 40 and oof["tn"] + oof["fp"] == 40
    assert fit["in_sample"]["sensitivity"] >= 0.9
    assert (out / "classifier_reliability.png").is_file()
    loaded = Models.load(site, threads=1)
    assert loaded.settings.threshold == pytest.approx(fit["threshold"])
    card = load_card(site)
    assert (site / "MODEL_CARD.md").read_text() == render_model_card(
        load_release(site), load_records(site / "evidence"))
    assert card["classifier"]["site_calibration"]
