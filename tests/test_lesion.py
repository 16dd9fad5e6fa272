"""The lesion reading (rule X): several views of one lesion read together, in the engine, the
evaluation, the CLI and the API."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from busdx.api.app import create_app
from busdx.cli.main import main
from busdx.errors import BusdxError
from busdx.evaluation.classification import (
    Prediction,
    evaluate_lesion_reading,
    fit_lesion_reading,
    lesion_predictions,
    roc_auc,
)
from busdx.inference.lesion import (
    Agreement,
    ViewScore,
    compile_pattern,
    group_means,
    lesion_key,
    read_lesion,
)
from busdx.inference.models import ClassifierSettings, Models
from stand_in_models import (
    REAL_MODELS_MISSING,
    STAND_IN_CARD,
    build_stand_in_models,
    real_models_dir,
)
from tiers import unavailable


def _view(logit, found=True, version="v1", temperature=2.0):
    return ViewScore(logit, temperature, found, version)


def test_group_means_average_within_each_group():
    out = group_means([1.0, 3.0, 5.0, -2.0], ["a", "a", "b", 7])
    assert out.tolist() == [2.0, 2.0, 5.0, -2.0]
    with pytest.raises(ValueError):
        group_means([1.0], ["a", "b"])


def test_read_lesion_averages_logits_under_the_temperature():
    reading = read_lesion([_view(1.0), _view(3.0)], 0.5)
    assert reading.logit == 2.0 and reading.views == 2
    assert reading.probability == pytest.approx(1 / (1 + math.exp(-2.0 / 2.0)))
    assert reading.label == "malignant" and reading.note == ""
    assert reading.risk.name == "4C"
    body = reading.to_json()
    assert body["disclaimer"] and body["risk_band"]["name"] == "4C"


def test_one_view_reads_as_that_image_at_the_lesion_threshold():
    reading = read_lesion([_view(-1.0)], 0.4)
    assert reading.probability == pytest.approx(1 / (1 + math.exp(0.5)))  # 0.378
    assert reading.label == "benign" and reading.threshold == 0.4
    assert "one view" in reading.note


def test_no_view_with_a_lesion_gives_no_call_and_no_band():
    """As for one image: without a lesion in any view there is nothing to call or grade; the
    probability stays, for reference. One view with a lesion is enough for a call."""
    reading = read_lesion([_view(3.0, found=False), _view(2.0, found=False)], 0.5)
    assert reading.label == "no lesion" and reading.risk is None
    assert "no lesion found in any of the 2 views" in reading.note
    assert "no benign or malignant call" in reading.note
    body = reading.to_json()
    assert body["label"] == "no lesion" and body["risk_band"] is None
    assert body["probability"] == pytest.approx(1 / (1 + math.exp(-2.5 / 2.0)))
    alone = read_lesion([_view(-1.0, found=False)], 0.5)
    assert alone.label == "no lesion" and alone.risk is None
    assert alone.note == ("no lesion found in the view: no benign or malignant call is made; the "
                          "probability is the whole image's, for reference only")
    some = read_lesion([_view(3.0, found=False), _view(2.0)], 0.5)
    assert some.label == "malignant" and some.risk is not None
    assert "no lesion found in 1 of 2 views" in some.note


def test_a_view_that_may_not_be_ultrasound_withholds_the_lesions_call():
    """One chart among the views makes their mean mean nothing: no call and no band, however
    the other views read; the probability stays, for reference, and the note says why."""
    chart = ViewScore(3.0, 2.0, True, "v1", True, not_ultrasound=True)
    for views in ([chart], [_view(2.0), chart], [_view(-3.0, found=False), chart]):
        reading = read_lesion(views, 0.5)
        assert reading.label == "call withheld" and reading.risk is None
        assert reading.views_not_ultrasound == 1
        assert f"1 of {len(views)} views may not be a breast ultrasound" in reading.note
        assert "one view: the reading" not in reading.note
        body = reading.to_json()
        assert body["risk_band"] is None and body["views_not_ultrasound"] == 1
    # without a lesion in any view there is no call to withhold: it says "no lesion"
    nothing = ViewScore(3.0, 2.0, False, "v1", True, not_ultrasound=True)
    assert read_lesion([nothing], 0.5).label == "no lesion"


def test_read_lesion_refuses_what_it_cannot_read():
    with pytest.raises(BusdxError, match="no lesion reading"):
        read_lesion([_view(0.0)], None)
    with pytest.raises(BusdxError, match="at least one"):
        read_lesion([], 0.5)
    with pytest.raises(BusdxError, match="different models"):
        read_lesion([_view(0.0), _view(0.0, version="v2")], 0.5)


def test_views_without_a_lesion_are_counted_and_noted():
    reading = read_lesion([_view(0.0, found=False), _view(1.0)], 0.5)
    assert reading.views_without_lesion == 1
    assert "no lesion found in 1 of 2 views" in reading.note


def test_views_with_a_caution_are_counted_and_noted():
    plain = read_lesion([_view(0.0), _view(1.0)], 0.5)
    assert plain.views_unusual == 0 and "unlike" not in plain.note
    warned = read_lesion([ViewScore(0.0, 2.0, True, "v1", unusual=True), _view(1.0)], 0.5)
    assert warned.views_unusual == 1 and warned.to_json()["views_unusual"] == 1
    assert "1 of 2 views unlike the training images" in warned.note
    assert warned.probability == plain.probability  # a caution, not a change of reading


def _preds(rng, n_lesions=60):
    """Two views per lesion: a lesion effect shared by its views plus view noise."""
    preds, lesions = [], []
    for i in range(n_lesions):
        label = int(i % 3 == 0)
        centre = rng.normal(1.5 if label else -1.5, 1.0)
        for view in "lr":
            z = centre + rng.normal(0, 1.5)
            preds.append(Prediction(f"bus_{i:04d}-{view}", str(i), label, 4, z,
                                    1 / (1 + math.exp(-z))))
            lesions.append(str(i))
    return preds, lesions


def test_lesion_predictions_give_each_image_its_lesion_mean():
    preds, lesions = _preds(np.random.default_rng(0))
    images, per_lesion = lesion_predictions(preds, lesions, 1.0)
    assert len(images) == len(preds) and len(per_lesion) == len(set(lesions))
    assert images[0].logit == images[1].logit == pytest.approx((preds[0].logit + preds[1].logit) / 2)
    assert images[0].prob == pytest.approx(1 / (1 + math.exp(-images[0].logit)))
    # averaging the views' noise away ranks better than one view at a time
    y = [p.label for p in preds]
    assert roc_auc(y, [p.logit for p in images]) > roc_auc(y, [p.logit for p in preds])
    bad = preds[:2]
    bad[1] = Prediction(bad[1].id, bad[1].patient, 1 - bad[0].label, 4, 0.0, 0.5)
    with pytest.raises(BusdxError, match="disagree"):
        lesion_predictions(bad, lesions[:2], 1.0)


def test_fit_lesion_reading_keeps_the_target_sensitivity_on_validation():
    preds, lesions = _preds(np.random.default_rng(1))
    fit = fit_lesion_reading(preds, lesions, 1.0, 0.90)
    v = fit["validation"]
    assert v["sensitivity"] >= 0.90 and v["lesions"] == 60 and v["multi_view_lesions"] == 60
    assert fit["offered"] == (v["auc_lesion_reading"] >= v["auc_image_reading"])
    test = evaluate_lesion_reading(preds, lesions, 1.0, fit["threshold"], "predicted", reps=20)
    assert test["image"]["n"] == 120 and test["lesion"]["n"] == 60
    assert test["image"]["sensitivity"] == pytest.approx(v["sensitivity"])
    assert test["multi_view_lesions"] == 60


def _card(lesion: dict | None):
    card = json.loads(json.dumps(STAND_IN_CARD))
    if lesion is not None:
        card["classifier"]["lesion_reading"] = lesion
    return card


def _settings(tmp_path, lesion: dict | None) -> ClassifierSettings:
    return Models.load(build_stand_in_models(tmp_path, _card(lesion))).settings


def test_settings_take_the_lesion_threshold_only_when_offered(tmp_path):
    assert _settings(tmp_path / "a", None).lesion_threshold is None
    off = {"threshold": 0.3, "offered": False}
    assert _settings(tmp_path / "b", off).lesion_threshold is None
    assert _settings(tmp_path / "c", {"threshold": 0.3, "offered": True}).lesion_threshold == 0.3
    with pytest.raises(BusdxError, match="lesion threshold"):
        _settings(tmp_path / "d", {"threshold": 1.5, "offered": True})


def test_lesion_key_from_a_pattern():
    pattern = compile_pattern(r"(bus_\d+)-[lr]")
    assert lesion_key(Path("in/bus_0007-l.png"), pattern) == "bus_0007"
    assert lesion_key(Path("in/bus_0851-s.png"), pattern) == "in/bus_0851-s.png"
    by_folder = compile_pattern(r"(.*)/[^/]+$")
    assert lesion_key(Path("cases/12/a.png"), by_folder) == "cases/12"
    with pytest.raises(BusdxError, match="group"):
        compile_pattern(r"bus_\d+")
    with pytest.raises(BusdxError, match="regular expression"):
        compile_pattern(r"(unclosed")


@pytest.fixture(scope="module")
def lesion_models(tmp_path_factory):
    return build_stand_in_models(tmp_path_factory.mktemp("models"),
                                 _card({"threshold": 0.45, "offered": True}))


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_writes_one_row_per_lesion(tmp_path, fixtures_root, lesion_models, monkeypatch):
    monkeypatch.setenv("BUSDX_MODELS", str(lesion_models))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bus_0007-l.png", "bus_0007-r.png", "bus_0851-s.png"):
        shutil.copy(fixtures_root / "Images" / name, folder / name)
    (folder / "bus_0009-l.png").write_bytes(b"not an image")
    # one view of a third lesion with colour over it: the lesion's row carries the caution
    grey = np.asarray(Image.open(fixtures_root / "Images" / "bus_0358-l.png").convert("L"))
    colour = np.repeat(grey[..., None], 3, axis=2).copy()
    colour[40:120, 40:200] = (220, 40, 30)
    Image.fromarray(colour).save(folder / "bus_0358-l.png")
    shutil.copy(fixtures_root / "Images" / "bus_0358-r.png", folder / "bus_0358-r.png")
    images, lesions_csv = tmp_path / "images.csv", tmp_path / "lesions.csv"
    assert main(["predict", str(folder), "--csv", str(images), "--lesion-pattern",
                 r"(bus_\d+)-[lrs]", "--lesions-csv", str(lesions_csv)]) == 0
    by_path = {r["path"]: r for r in _rows(images)}
    rows = {r["lesion"]: r for r in _rows(lesions_csv)}
    assert set(rows) == {"bus_0007", "bus_0009", "bus_0358", "bus_0851"}
    two = rows["bus_0007"]
    assert two["views"] == "2" and two["failed_views"] == "0" and two["error"] == ""
    assert rows["bus_0358"]["views_unusual"] == "1" and "unlike" in rows["bus_0358"]["note"]
    assert "colour high" in by_path[str(folder / "bus_0358-l.png")]["input_unusual"]
    logits = [math.log(float(by_path[str(folder / n)]["probability"])
                       / (1 - float(by_path[str(folder / n)]["probability"]))) * 1.5
              for n in ("bus_0007-l.png", "bus_0007-r.png")]
    expected = 1 / (1 + math.exp(-np.mean(logits) / 1.5))
    assert float(two["probability"]) == pytest.approx(expected, abs=1e-5)
    assert two["label"] == ("malignant" if expected >= 0.45 else "benign")
    assert rows["bus_0851"]["views"] == "1" and "one view" in rows["bus_0851"]["note"]
    assert rows["bus_0009"]["error"] and rows["bus_0009"]["views"] == "0"


def test_predict_refuses_a_lesion_pattern_without_a_lesion_reading(tmp_path, fixtures_root,
                                                                 monkeypatch):
    monkeypatch.setenv("BUSDX_MODELS", str(build_stand_in_models(tmp_path / "m")))
    image = fixtures_root / "Images" / "bus_0007-l.png"
    args = ["predict", str(image), "--csv", str(tmp_path / "a.csv")]
    assert main(args + ["--lesion-pattern", "(bus)"]) == 2  # without --lesions-csv
    assert main(args + ["--lesion-pattern", "(bus)", "--lesions-csv", str(tmp_path / "l.csv")]) == 2


def test_api_reads_a_lesion_from_analysed_views(fixtures_root, lesion_models, tmp_path):
    with TestClient(create_app(lesion_models)) as client:
        views = []
        for name in ("bus_0007-l.png", "bus_0007-r.png"):
            data = (fixtures_root / "Images" / name).read_bytes()
            body = client.post("/api/analyze", files={"file": (name, data, "image/png")}).json()
            assert body["probability"] == pytest.approx(
                1 / (1 + math.exp(-body["logit"] / body["temperature"])))
            views.append({k: body[k] for k in ("logit", "lesion_found", "model_version")})
        answer = client.post("/api/lesion", json={"views": views})
        assert answer.status_code == 200, answer.text
        lesion = answer.json()
        mean = (views[0]["logit"] + views[1]["logit"]) / 2
        assert lesion["logit"] == pytest.approx(mean) and lesion["views"] == 2
        assert lesion["probability"] == pytest.approx(1 / (1 + math.exp(-mean / 1.5)))
        assert lesion["threshold"] == 0.45 and lesion["disclaimer"]
        stale = [dict(views[0], model_version="other")]
        assert client.post("/api/lesion", json={"views": stale}).status_code == 409
        flagged = client.post("/api/lesion", json={"views": [dict(views[0], unusual=True),
                                                             views[1]]}).json()
        assert flagged["views_unusual"] == 1 and flagged["logit"] == pytest.approx(mean)
        assert lesion["views_unusual"] == 0  # not sent: no caution
        assert client.post("/api/lesion", json={"views": []}).status_code == 422
        assert client.post("/api/lesion", json={"views": [dict(views[0], logit="nan")]}
                           ).status_code == 422
    plain = build_stand_in_models(tmp_path / "plain")
    with TestClient(create_app(plain)) as client:
        answer = client.post("/api/lesion", json={"views": [dict(views[0])]})
        assert answer.status_code == 409 and "no lesion reading" in answer.json()["detail"]


# --- views that cannot be one lesion


def _scored(logit: float, diameter: float | None = None, units: str | None = None) -> ViewScore:
    return ViewScore(logit, 1.0, diameter is not None, "m", False, diameter, units)


def test_views_that_cannot_be_one_lesion_get_a_caution(tmp_path):
    agree = Agreement(logit_spread=2.0, diameter_ratio=1.5)
    assert agree.disagreement([_scored(0.0, 10, "px"), _scored(1.9, 14, "px")]) == ""
    assert "probabilities differ" in agree.disagreement([_scored(0.0), _scored(2.1)])
    assert "differ in size" in agree.disagreement([_scored(0.0, 10, "mm"), _scored(0.5, 16, "mm")])
    # sizes in different units, or a view without a lesion: the sizes are not compared
    assert agree.disagreement([_scored(0.0, 10, "mm"), _scored(0.5, 16, "px")]) == ""
    assert agree.disagreement([_scored(0.0, 10, "px"), _scored(0.5)]) == ""
    reading = read_lesion([_scored(0.0), _scored(3.0)], 0.5, agree)
    assert reading.views_disagree and reading.to_json()["views_disagree"] is True
    assert "may not show one lesion" in reading.note and reading.label  # still read
    assert not read_lesion([_scored(0.0), _scored(3.0)], 0.5).views_disagree  # no limits: no check
    assert not read_lesion([_scored(9.0)], 0.5, agree).views_disagree  # one view
    bad = {"threshold": 0.3, "offered": True,
           "agreement": {"logit_spread": -1.0, "diameter_ratio": 2.0}}
    with pytest.raises(BusdxError, match="agreement"):
        build_stand_in_models(tmp_path / "bad", _card(bad))


def _bundled() -> Path:
    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    return directory


def test_views_of_two_patients_are_flagged_by_the_api_and_the_csv(fixtures_root, tmp_path,
                                                                   monkeypatch):
    """Two views of one BUS-BRA lesion read quietly; a view of another patient beside one of
    them gets the caution, in /api/lesion and in the lesions CSV."""
    directory = _bundled()
    from busdx.release import load_release

    if load_release(directory).classifier.agreement is None:
        unavailable("the bundled card has no lesion_reading.agreement")
    with TestClient(create_app(directory)) as client:
        def view(name: str) -> dict:
            data = (fixtures_root / "Images" / name).read_bytes()
            body = client.post("/api/analyze?images=none",
                               files={"file": (name, data, "image/png")}).json()
            m = body["measurements"]
            return {"logit": body["logit"], "lesion_found": body["lesion_found"],
                    "model_version": body["model_version"], "longest_diameter":
                    m and m["longest_diameter"], "units": m and m["units"]}

        same = client.post("/api/lesion", json={"views": [view("bus_0007-l.png"),
                                                          view("bus_0007-r.png")]}).json()
        mixed = client.post("/api/lesion", json={"views": [view("bus_0007-l.png"),
                                                           view("bus_0009-l.png")]}).json()
    assert same["views_disagree"] is False and "may not show" not in same["note"]
    assert mixed["views_disagree"] is True and "may not show one lesion" in mixed["note"]

    monkeypatch.setenv("BUSDX_MODELS", str(directory))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bus_0007-l.png", "bus_0007-r.png", "bus_0009-l.png"):
        shutil.copy(fixtures_root / "Images" / name, folder / name)
    lesions_csv = tmp_path / "lesions.csv"
    # a pattern that wrongly takes 0007-l and 0009-l for one lesion (their side letter)
    assert main(["predict", str(folder), "--csv", str(tmp_path / "i.csv"), "--lesion-pattern",
                 r"bus_\d+-([lr])", "--lesions-csv", str(lesions_csv)]) == 0
    rows = {r["lesion"]: r for r in _rows(lesions_csv)}
    assert rows["l"]["views"] == "2" and rows["l"]["views_disagree"] == "true"
    assert rows["r"]["views_disagree"] == "false"
