"""The studies in studies/: their feature code, and their recorded answers reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from busdx.evaluation.model_card import load_card
from stand_in_models import load_script

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    return load_script(ROOT / "studies" / f"{name}.py")


def test_shape_features_of_a_dark_upright_ellipse():
    study = _load("shape_features")
    yy, xx = np.mgrid[:200, :200]
    mask = ((yy - 80) / 40.0) ** 2 + ((xx - 100) / 20.0) ** 2 <= 1.0  # twice as tall as wide
    image = np.full((200, 200), 0.5, dtype=np.float32)
    image[mask] = 0.1  # hypoechoic
    image[121:170, 80:121] = 0.2  # a shadow below it
    f = dict(zip(study.FEATURES, study.features(image, mask.astype(np.uint8)), strict=True))
    assert f["height_over_width"] == pytest.approx(81 / 41, rel=0.01)
    assert f["minor_over_major"] == pytest.approx(0.5, rel=0.05)
    assert f["abs_sin_angle"] == pytest.approx(1.0, abs=0.01)  # long axis vertical
    assert f["solidity"] > 0.95 and 0.7 < f["circularity"] < 0.9  # 0.84 for a true 2:1 ellipse
    assert f["log_echo_ratio"] < -1.0 and f["log_posterior_ratio"] < -0.8
    assert f["heterogeneity"] == pytest.approx(0.0, abs=1e-9)
    assert study.features(image, np.zeros((200, 200), np.uint8)) is None


def test_robustness_conditions_change_images_as_named():
    study = _load("robustness")
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, size=(60, 80)).astype(np.float32)
    by_kind = {c.kind: c for c in study.CONDITIONS}
    assert np.array_equal(by_kind["none"].apply(image, rng), image)
    assert np.array_equal(by_kind["mirror"].apply(image, rng), image[:, ::-1])
    darker = study.gamma(image, 1.5, rng)
    assert darker.dtype == np.float32 and np.all(darker <= image) and darker.min() >= 0
    flat = study.contrast(image, 0.6, rng)
    assert flat.std() == pytest.approx(0.6 * image.std(), rel=1e-4)
    assert flat.mean() == pytest.approx(image.mean(), abs=1e-5)
    assert study.blur(image, 3.0, rng).std() < image.std()
    noisy = study.speckle(image, 0.3, np.random.default_rng(1))
    assert np.array_equal(noisy, study.speckle(image, 0.3, np.random.default_rng(1)))  # seeded
    assert study.downscale(image, 0.5, rng).shape == image.shape
    data = study.jpeg(image, 40, rng)
    assert data[:2] == b"\xff\xd8"  # a JPEG file, decoded by the product like an upload
    from busdx.inference.decode import decode

    decoded = decode(data).image
    assert decoded.shape == image.shape and np.abs(decoded - image).mean() < 0.1
    finer = by_kind["upsample"].apply(image, rng)
    assert finer.shape == (120, 160) and abs(finer.mean() - image.mean()) < 0.01
    outline = np.zeros((120, 160), bool)
    outline[20:60, 40:100] = True
    back = study._to_shape(outline, image.shape)
    assert back.shape == image.shape and back[10:30, 20:50].all() and not back[:10].any()
    assert study.dice(np.ones((4, 4)), np.ones((4, 4))) == 1.0
    assert study.dice(np.eye(4), np.zeros((4, 4))) == 0.0


def test_robustness_summary_flags_drops_against_the_unperturbed_images():
    study = _load("robustness")
    labels = [0, 0, 1, 1]
    good = [0.1, 0.2, 0.8, 0.9]

    def rows(probs):
        return [{"label": y, "probability": p, "malignant": p >= 0.5, "dice": 0.9,
                 "found": True} for y, p in zip(labels, probs, strict=True)]
    collected = {"threshold": 0.5, "model_version": "x",
                 "rows": {c.name: rows(good) for c in study.CONDITIONS}}
    collected["rows"]["blur sigma 3 px"] = rows([0.1, 0.6, 0.4, 0.9])
    collected["rows"]["blur sigma 3 px"][2]["found"] = False  # called "no lesion": a miss
    result = study.summarise(collected)
    blurred = result["conditions"]["blur sigma 3 px"]
    assert result["flagged"] == ["blur sigma 3 px"]
    assert blurred["auc"] == 0.75 and blurred["sensitivity"] == 0.5
    assert blurred["calls_flipped"] == 2
    assert blurred["mean_abs_probability_change"] == pytest.approx(0.2)
    assert blurred["site_recalibrated"] is None  # too few images to refit
    assert blurred["lesions_found"] == 0.75
    assert result["conditions"]["unperturbed"]["lesions_found"] == 1.0


def test_robustness_comparison_counts_neither_the_unperturbed_image_nor_the_mirror():
    study = _load("robustness")

    def result(version, auc, flips, sensitivity=0.9):
        conditions = {c.name: {"auc": auc, "sensitivity": sensitivity, "specificity": 0.8,
                               "calls_flipped": flips} for c in study.CONDITIONS}
        conditions["left-right mirror"]["calls_flipped"] = 100  # not counted
        conditions["left-right mirror"]["sensitivity"] = 0.1  # not counted
        conditions["unperturbed"]["auc"] = 0.5  # not counted
        conditions["unperturbed"]["sensitivity"] = 0.95  # each graph's own reference
        return {"model_version": version, "conditions": conditions}

    out = study.compare(result("a", 0.90, 3), result("b", 0.91, 2))
    counted = len(study.CONDITIONS) - len(study.NOT_COUNTED)
    assert counted == 14  # what the rules that compare studies were fixed on
    assert len(out["counted_conditions"]) == counted
    assert out["mean_auc"] == pytest.approx({"baseline": 0.90, "candidate": 0.91})
    assert out["calls_flipped"] == {"baseline": 3 * counted, "candidate": 2 * counted}
    assert out["candidate_more_stable"]
    assert out["mean_abs_sensitivity_change"] == pytest.approx({"baseline": 0.05,
                                                                "candidate": 0.05})
    assert not out["steadier_operating_point"]
    assert study.compare(result("a", 0.9, 1), result("b", 0.9, 1, 0.93))["steadier_operating_point"]
    assert not study.compare(result("a", 0.90, 2), result("b", 0.91, 2))["candidate_more_stable"]
    with pytest.raises(ValueError):
        study.compare(result("a", 0.9, 1), {"model_version": "b", "conditions": {}})


def test_the_recorded_mirror_averaging_choice_holds_in_its_evidence():
    """Rule N shipped mirror averaging for stability; its recorded evidence says so."""
    recorded = json.loads((ROOT / "reports" / "studies" / "robustness_tta.json").read_text())
    assert recorded["candidate_more_stable"]
    card = load_card(ROOT / "models")["classifier"]
    if "robustness_tta.json" not in (card.get("option_note") or ""):
        pytest.skip("the bundled classifier's option no longer rests on this comparison")
    assert card["tta"] == "flip"


def test_whole_image_donors_are_other_patients_of_the_asked_scanner():
    study = _load("whole_image_view")
    scanners = ["a", "a", "a", "b", "b", "c"]
    patients = ["1", "1", "2", "3", "4", "5"]
    same = study.pick_donors(scanners, patients, same=True)
    other = study.pick_donors(scanners, patients, same=False)
    assert same[0] == 2 and same[1] == 2 and same[2] in (0, 1)  # never the same patient
    assert same[5] is None  # the only image of its scanner
    assert all(scanners[j] != scanners[i] for i, j in enumerate(other))
    assert same == study.pick_donors(scanners, patients, same=True)  # seeded


def _stamp(image: np.ndarray, r: int, c: int, strokes: list[tuple[int, int, int, int]]) -> None:
    """Bright strokes (row0, row1, col0, col1 relative to (r, c), ends included)."""
    for r0, r1, c0, c1 in strokes:
        image[r + r0:r + r1 + 1, c + c0:c + c1 + 1] = 250


def test_caliper_marks_are_found_letters_passed_over_and_filled_away():
    study = _load("calipers")
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(110, 12, (120, 160)), 0, 255).astype(np.uint8)
    _stamp(image, 40, 40, [(0, 1, -4, 5), (-4, 5, 0, 1)])  # a caliper "+", 2 pixels thick
    # an "H" and an "E" (strokes in the quadrants) and a "+" inside a word (letters close by)
    _stamp(image, 80, 40, [(-5, 5, -4, -3), (-5, 5, 4, 5), (0, 1, -4, 5)])
    _stamp(image, 80, 80, [(-5, 5, -4, -3), (-5, -4, -4, 4), (0, 1, -4, 3), (4, 5, -4, 4)])
    _stamp(image, 80, 120, [(0, 1, -4, 5), (-4, 5, 0, 1)])
    _stamp(image, 80, 108, [(-5, 5, -4, -3), (-5, 5, 4, 5), (0, 1, -4, 5)])
    marks = study.find_marks(image)
    assert len(marks) == 1 and max(abs(marks[0][0] - 40.5), abs(marks[0][1] - 40.5)) <= 1
    # the same on the product's float gray levels
    assert study.find_marks(image / 255.0) == marks
    filled = study.fill(image, study.mark_mask(image.shape, marks))
    assert filled[36:46, 36:46].max() < 200 and study.find_marks(filled) == []
    untouched = ~study.mark_mask(image.shape, marks)
    assert np.array_equal(filled[untouched], image[untouched].astype(np.float32))
    # sham spots mirror the marks across the midline, never onto a mark
    assert study.sham_marks(160, marks) == [(marks[0][0], 159 - marks[0][1])]
    assert study.sham_marks(81, [(40, 40)]) == []


def test_cross_validation_threshold_and_pair_helpers_on_known_scores():
    study = _load("cross_validation")
    rng = np.random.default_rng(0)
    n = 400
    labels = (np.arange(n) % 3 == 0).astype(int)
    patients = np.array([str(i // 2) for i in range(n)])  # two images per patient
    folds = np.array([1 + (i // 2) % 4 for i in range(n)])
    separable = labels + 0.1 * rng.random(n)
    within = study.threshold_within(labels, separable, patients, folds, splits=5)
    # the most specific threshold keeping 90% of the fitting part's cancers cuts among them
    assert within["splits"] == 20 and within["mean_specificity"] == 1.0
    assert 0.8 < within["mean_sensitivity"] < 1.0
    transfer = study.threshold_transfer(labels, separable, folds)
    assert transfer["mean_specificity"] == 1.0 and set(transfer["per_fold"]) == {"1", "2", "3", "4"}
    noisy = labels + rng.normal(0, 0.7, n)
    better = study.compare_pairs(labels, noisy, separable, patients, reps=50)
    assert better["difference"] > 0 and better["difference_ci95"][0] > 0
    assert study.compare_pairs(labels, noisy, noisy, patients, reps=50)["difference"] == 0
    # a higher fitting target buys sensitivity with specificity
    lo = study.threshold_within(labels, noisy, patients, folds, splits=20, target=0.90)
    hi = study.threshold_within(labels, noisy, patients, folds, splits=20, target=0.96)
    assert hi["mean_sensitivity"] > lo["mean_sensitivity"]
    assert hi["mean_specificity"] < lo["mean_specificity"]


def test_cross_validation_study_reproduces_its_recorded_answer(tmp_path):
    """Rule T's answers come from the out-of-fold logits kept beside them."""
    study = _load("cross_validation")
    folder = ROOT / "reports" / "studies"
    oof = json.loads((folder / study.OOF_FILE).read_text())
    recorded = json.loads((folder / study.RESULT_FILE).read_text())
    assert 5 not in oof["images"]["fold"]  # the test fold never reached the runs
    result = study.analyse(oof)
    assert result["question_1"] == recorded["question_1"]
    assert not result["question_1"]["gain"]
    assert result["rule_v"] == recorded["rule_v"]  # rule V: the pair at 288 pixels
    assert not result["rule_v"]["gain"]
    assert result["rule_w"] == recorded["rule_w"]  # rule W: replication and a lite2 two-view
    assert not result["rule_w"]["crop_288_replicated"]
    for name, seed in recorded["seeds"].items():
        for key, auc in seed["auc"].items():
            got = result["seeds"][name]["auc"][key]
            assert got["pooled_auc"] == pytest.approx(auc["pooled_auc"], abs=1e-9)
            assert got["pooled_auc_ci95"] == pytest.approx(auc["pooled_auc_ci95"], abs=1e-9)
        assert result["seeds"][name]["threshold_within"] == recorded[
            "seeds"][name]["threshold_within"]
        assert result["seeds"][name]["birads4_triage"] == recorded["seeds"][name]["birads4_triage"]
        # rule X: the same scores read per lesion
        assert result["seeds"][name]["lesion_reading"] == recorded["seeds"][name]["lesion_reading"]
    for name, e in recorded["ensembles"].items():
        assert result["ensembles"][name]["pooled_auc"] == pytest.approx(e["pooled_auc"], abs=1e-9)
    figure = study.plot(oof, result, tmp_path / "cv.png")
    assert figure.stat().st_size > 10_000


def test_rule_v_needs_a_gain_on_the_deciding_seed_and_against_every_seed():
    study = _load("cross_validation")

    def out(diff, lo, ef, ab):
        pair = {"difference": diff, "difference_ci95": [lo, diff + 0.01]}
        seeds = {n: {"auc": {"A+B": {"pooled_auc": v}, "E+F": {"pooled_auc": ef}},
                     "resolution": {"pairs": pair, "two_view_networks": pair,
                                    "crop_networks": pair}} for n, v in ab.items()}
        return {"seeds": seeds}

    names = ["seed0", "seed1"]
    assert study.rule_v(out(0.008, 0.001, 0.933, {"seed0": 0.925, "seed1": 0.927}), names)["gain"]
    # the second seed's pair is too close: a seed's luck, not a gain
    assert not study.rule_v(out(0.008, 0.001, 0.933, {"seed0": 0.925, "seed1": 0.930}),
                            names)["gain"]
    assert not study.rule_v(out(0.008, -0.001, 0.933, {"seed0": 0.925, "seed1": 0.927}),
                            names)["gain"]
    assert not study.rule_v(out(0.004, 0.001, 0.929, {"seed0": 0.925, "seed1": 0.920}),
                            names)["gain"]


@pytest.mark.full_data
def test_cross_validation_record_matches_the_dataset(busbra_root):
    from busdx.data.index import load_index

    study = _load("cross_validation")
    oof = json.loads((ROOT / "reports" / "studies" / study.OOF_FILE).read_text())
    by_id = load_index(busbra_root).by_id()
    expected = sorted(r.id for r in by_id.values() if r.fold not in (None, 5))
    images = oof["images"]
    assert images["id"] == expected
    for i, image_id in enumerate(images["id"]):
        r = by_id[image_id]
        assert (images["patient"][i], images["label"][i], images["fold"][i],
                images["birads"][i]) == (r.patient, r.label, r.fold, r.birads)


def test_the_model_card_shows_the_recorded_cross_validation():
    """The card's summary is the study's recorded answer, not numbers typed in."""
    study = _load("cross_validation")
    recorded = json.loads((ROOT / "reports" / "studies" / study.RESULT_FILE).read_text())
    card = load_card(ROOT / "models")["classifier"]
    if "recipe_cross_validation" not in card:
        pytest.skip("the bundled card carries no cross-validation")
    summary = json.loads(json.dumps(study.card_summary(recorded)))
    assert card["recipe_cross_validation"] == summary


def test_the_card_claims_an_unreachable_operating_point_only_when_its_evidence_says_so():
    from busdx.evaluation.card_markdown import _cross_validation_lines

    study = _load("cross_validation")
    recorded = json.loads((ROOT / "reports" / "studies" / study.RESULT_FILE).read_text())
    summary = study.card_summary(recorded)
    text = "\n".join(_cross_validation_lines(summary))
    reached = all(v >= 0.80 for v in summary["specificity_at_sensitivity_0.90"].values())
    assert ("does not reach sensitivity 0.90 with specificity 0.80" in text) != reached
    summary["specificity_at_sensitivity_0.90"] = {"seed0": 0.85}
    assert "does not reach" not in "\n".join(_cross_validation_lines(summary))
    assert _cross_validation_lines(None) == []


def test_margins_frames_put_the_image_in_a_black_frame_of_the_named_size():
    study = _load("margins")
    image = np.full((100, 200), 0.5, dtype=np.float32)
    framed = study.frame(image, study.FRAMES["top 10%, sides 30%"], np.random.default_rng(0))
    assert framed.shape == (110, 320)
    np.testing.assert_array_equal(framed[10:, 60:260], image)
    assert framed[:10].max() <= 3 / 255 and framed[:, :60].max() <= 3 / 255


def test_dual_view_captures_put_the_halves_side_by_side_in_a_frame():
    study = _load("dual_view")
    left, right = np.full((50, 40), 0.5, np.float32), np.full((60, 30), 0.7, np.float32)
    image = study.capture(left, right, np.random.default_rng(0))
    f, g = study.FRAME, study.GAP
    assert image.shape == (60 + 2 * f, 40 + g + 30 + 2 * f)
    np.testing.assert_array_equal(image[f:f + 50, f:f + 40], left)
    np.testing.assert_array_equal(image[f:f + 60, f + 40 + g:f + 40 + g + 30], right)
    assert image[f:f + 50, f + 40:f + 40 + g].max() <= 3 / 255


def test_scanner_screens_put_the_scans_where_the_dicom_says():
    from busdx.inference.decode import decode_bytes

    study = _load("scanner_screens")
    a, b = np.full((60, 48), 0.5, np.float32), np.full((70, 40), 0.7, np.float32)
    pixels, boxes = study.screen([a, b], np.random.default_rng(0))
    assert [box[2:] for box in boxes] == [(48, 60), (40, 70)]
    assert boxes[1][0] == boxes[0][0] + 48  # the panes touch
    for (x, y, w, h), scan in zip(boxes, (a, b), strict=True):
        np.testing.assert_array_equal(pixels[y:y + h, x:x + w], np.round(scan * 255))
    outside = pixels.copy()
    for x, y, w, h in boxes:
        outside[y:y + h, x:x + w] = 0
    assert outside.max() == 255  # the annotations are there
    decoded = decode_bytes(study.screen_dicom(pixels, boxes))
    assert [(r.area.left, r.area.top, r.area.width, r.area.height) for r in decoded.regions] \
        == boxes
    assert decoded.pixel_spacing_mm == pytest.approx((study.MM_PER_PIXEL,) * 2)


def test_colour_overlays_draw_colour_inside_the_box_only():
    from busdx.inference.quality import colour_mask

    study = _load("colour_overlays")
    grey = np.tile(np.linspace(20, 220, 120).astype(np.uint8), (90, 1))
    mask = np.zeros_like(grey, bool)
    mask[30:50, 40:70] = True
    box = study.colour_box(mask)
    assert box == (22, 58, 28, 82)  # grown by 40% of the lesion's height and width
    top, bottom, left, right = box
    for draw in (study.doppler, study.elastography):
        rgb = draw(grey, box, np.random.default_rng(0))
        colour = colour_mask(rgb)
        assert colour is not None and colour[top:bottom, left:right].any()
        outside = colour.copy()
        outside[top:bottom, left:right] = False
        assert not outside.any(), draw.__name__
        np.testing.assert_array_equal(rgb[:top, :, 0], grey[:top])  # the rest stays grey
    assert colour_mask(study.grey_rgb(grey)) is None



# ------------------------------------------------------- the recorded studies: rows and summaries
#
# Each study that analyses images keeps its per-image rows (reports/studies/NAME_rows.json)
# beside its summary (NAME.json). The fast tier checks that the summary follows from the rows
# and re-runs the fixture images of the validation split against their rows; the full tier
# re-runs every image (sharing one analysis of each unaltered image between the studies) and
# compares rows and summary.

STUDIES = ("robustness", "colour_overlays", "margins", "shape_features", "calipers",
           "scanner_screens", "view_agreement", "dual_view", "whole_image_view")  # longest first
RECORDED = ROOT / "reports" / "studies"
VALIDATION_FIXTURES = ROOT / "tests" / "fixtures" / "busbra-validation"
ROWS_TOLERANCE = 1e-6  # a probability or logit computed again (another CPU may round otherwise)
SUMMARY_TOLERANCE = 1e-4
# the refit operating point moves in steps of one image when a probability moves a hair
LOOSER = {"site_recalibrated": 0.01}


def _rows(name: str) -> dict:
    return json.loads((RECORDED / f"{name}_rows.json").read_text())


def _summary(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())


def _summarise(study, collected: dict) -> dict:
    """The study's summary of ``collected``, as its JSON record holds it."""
    summarise = getattr(study, "summarise", None) or study.study
    return json.loads(json.dumps(summarise(collected)))


def _assert_same(got, expected, tol: float, where: str = "", looser: dict | None = None) -> None:
    """``got`` equals ``expected``: the same keys, lengths, strings, integers and flags; floats
    within ``tol`` (NaN equal to NaN); under a key of ``looser``, within its tolerance."""
    looser = looser or {}
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_same(got[key], expected[key], looser.get(key, tol), f"{where}/{key}", looser)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same(g, e, tol, f"{where}[{i}]", looser)
    elif isinstance(expected, float) and not isinstance(got, bool) and got is not None:
        assert got == pytest.approx(expected, abs=tol, nan_ok=True), where
    else:
        assert got == expected, where


def _json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_summary_follows_from_its_recorded_rows(name):
    """Pure: the recorded summary is what the study's own code makes of the recorded rows."""
    rows, recorded = _rows(name), _summary(name)
    assert rows["model_version"] == recorded["model_version"]
    _assert_same(_summarise(_load(name), rows), recorded, 1e-12)


def test_the_recorded_studies_keep_their_promises():
    """What the served analysis promises, as the recorded studies found it (the full tier checks
    that a re-run finds the same)."""
    margins = _summary("margins")
    for name in ("sides 25%, cut", "all edges 15%, cut", "top 10%, sides 30%, cut"):
        # a frame is undone: no call on a lesion found in both changes; a lesion whose
        # presence score sits at the check's threshold may be reported as "no lesion" when the
        # cut keeps a few rows fewer than the image had
        c = margins["conditions"][name]
        assert c["calls_flipped"] == c["calls_flipped_to_no_lesion"] <= 1, name
        assert margins["conditions"][name]["images_cut"] == margins["n"], name
    # --dual-view: the split capture is called as its two files are
    assert _summary("dual_view")["readings"]["split"]["calls_unlike_halves"] == 0
    screens = _summary("scanner_screens")
    # a DICOM screen reads as its scan, a dual view as its halves; the pixels never cut a scan
    assert screens["readings"]["dicom"]["calls_flipped"] == 0
    assert screens["readings"]["dicom"]["cut_exactly"] == screens["images"]
    assert screens["readings"]["screenshot"]["scan_cut_into"] == 0
    assert screens["dual_view"]["readings"]["dicom"]["calls_flipped"] == 0
    colour = _summary("colour_overlays")
    for name in ("plain", "colour_jpeg", "tinted"):  # grey images are not warned
        assert colour["readings"][name]["warned"] == 0, name
    assert colour["rule_y"]["ships"]  # why the fill is served: its conditions on both seeds
    assert all(all(seed["conditions"].values()) for seed in colour["rule_y"]["seeds"].values())


# --- the fast tier: the fixture images of the validation split, re-run against their rows


@pytest.fixture(scope="module")
def real_models():
    from busdx.inference.models import Models
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir
    from tiers import unavailable

    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    return Models.load(directory, threads=2)


@pytest.fixture(scope="module")
def fixture_records(fixtures_root) -> dict:
    """The committed fixtures by id: the validation split's (tests/fixtures/busbra-validation)
    and the others (training and test images)."""
    from busdx.data.index import load_index

    return {r.id: r for root in (VALIDATION_FIXTURES, fixtures_root)
            for r in load_index(root).records}


def _validation_fixtures(fixture_records: dict) -> list:
    return [r for r in fixture_records.values() if VALIDATION_FIXTURES in r.image_path.parents]


def _position(ids: list[str], record) -> int:
    assert record.id in ids, f"{record.id} is not among the study's recorded images"
    return ids.index(record.id)


def _check_models(real_models, rows: dict) -> None:
    if real_models.version != rows["model_version"]:
        pytest.fail(f"the rows were recorded with models {rows['model_version']}, not the "
                    f"bundled {real_models.version}: run the study again", pytrace=False)


@pytest.mark.parametrize("name", ["robustness", "margins"])
def test_fixed_images_rerun_as_recorded_per_condition(name, real_models, fixture_records):
    study, rows = _load(name), _rows(name)
    _check_models(real_models, rows)
    ids = [row["id"] for row in next(iter(rows["rows"].values()))]
    for record in _validation_fixtures(fixture_records):
        i = _position(ids, record)
        _assert_same(_json(study.image_rows(i, record, real_models)),
                     study.recorded_image(rows, i), ROWS_TOLERANCE, record.id)


@pytest.mark.parametrize("name", ["scanner_screens", "colour_overlays"])
def test_fixed_images_rerun_as_recorded_per_image(name, real_models, fixture_records):
    study, rows = _load(name), _rows(name)
    _check_models(real_models, rows)
    files = [row["image"] for row in rows["images"]]
    for record in _validation_fixtures(fixture_records):
        i = files.index(record.image_path.name)
        _assert_same(_json(study.image_row(i, record, real_models)), rows["images"][i],
                     ROWS_TOLERANCE, record.id)


@pytest.mark.parametrize(("name", "part"), [("dual_view", "rows"), ("scanner_screens", "lesions")])
def test_fixed_lesions_rerun_as_recorded(name, part, real_models, fixture_records):
    from _runner import lesion_pairs

    study, rows = _load(name), _rows(name)
    _check_models(real_models, rows)
    lesions = [row["lesion"] for row in rows[part]]
    pairs = lesion_pairs(_validation_fixtures(fixture_records))
    assert len(pairs) == 2
    for lesion, left, right in pairs:
        i = lesions.index(lesion)
        _assert_same(_json(study.lesion_row(i, lesion, left, right, real_models)), rows[part][i],
                     ROWS_TOLERANCE, lesion)


def test_fixed_images_rerun_as_recorded_by_the_calipers_study(real_models, fixture_records):
    study, rows = _load("calipers"), _rows("calipers")
    _check_models(real_models, rows)
    found = marked = 0
    for record in fixture_records.values():
        for split, part in rows["rows"].items():
            if record.id in part["ids"]:
                j = part["ids"].index(record.id)
                got = _json(study.image_row(record, real_models))
                _assert_same(got, study.recorded_image(rows, split, j), ROWS_TOLERANCE, record.id)
                found, marked = found + 1, marked + bool(got["marks"])
    assert found >= 4 and marked >= 2  # the validation fixtures, bus_0118's marks among them


def test_fixed_images_rerun_as_recorded_by_the_shape_features_study(real_models,
                                                                     fixture_records):
    study, rows = _load("shape_features"), _rows("shape_features")
    _check_models(real_models, rows)
    images = rows["images"]
    chosen = [r for r in fixture_records.values() if r.id in images]
    assert len(chosen) >= 4
    for record in chosen:
        got = study.image_row(record, images[record.id]["part"], real_models)
        _assert_same(_json(got), images[record.id], ROWS_TOLERANCE, record.id)


def test_fixed_lesions_rerun_as_recorded_by_the_view_agreement_study(real_models,
                                                                     fixture_records):
    study, rows = _load("view_agreement"), _rows("view_agreement")
    _check_models(real_models, rows)
    checked = 0
    for lesion in rows["lesions"]["validation"]:
        records = [fixture_records.get(f"bus_{int(lesion['lesion']):04d}-{side}")
                   for side in ("l", "r")]
        if all(records):
            got = [_json(study.image_row(r, real_models)) for r in records]
            _assert_same(got, lesion["views"], ROWS_TOLERANCE, lesion["lesion"])
            checked += 1
    assert checked >= 2  # the two validation fixture patients


def test_the_served_lesion_limits_are_the_view_agreement_study_s():
    """The card's lesion_reading.agreement, which serving reads, is what the study fitted."""
    from busdx.evaluation.model_card import load_card

    card = load_card(ROOT / "models")["classifier"]["lesion_reading"]
    fitted = _summary("view_agreement")["agreement"]
    for key, value in fitted.items():
        assert card["agreement"][key] == value, key


def test_fixed_images_rerun_as_recorded_by_the_whole_image_view_study(real_models,
                                                                       fixture_records):
    study, rows = _load("whole_image_view"), _rows("whole_image_view")
    _check_models(real_models, rows)
    batches = {r.id: study.image_batch(r, real_models) for r in fixture_records.values()
               if r.id in rows["ids"]}
    checked = 0
    for name, donors in rows["donors"].items():
        for i, j in enumerate(donors):
            own, donor = rows["ids"][i], None if j is None else rows["ids"][j]
            if own in batches and donor in batches:
                got = study.swapped_logit(batches[own], batches[donor], real_models)
                assert got == pytest.approx(rows["logits"][name][i], abs=ROWS_TOLERANCE), (name,
                                                                                          own)
                checked += 1
    assert checked >= 4  # each validation fixture with its own whole image at least


# --- the full tier: every image again


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_rerun_on_the_full_data_gives_its_recorded_rows_and_summary(name, busbra_root,
                                                                            study_baseline):
    from tiers import threads

    study, rows = _load(name), _rows(name)
    shared = {"baseline": study_baseline} if "baseline" in study.collect.__code__.co_varnames \
        else {}
    collected = _json(study.collect(str(busbra_root), None, threads=threads(), **shared))
    _assert_same(collected, rows, ROWS_TOLERANCE, name)
    _assert_same(_summarise(study, collected), _summary(name), SUMMARY_TOLERANCE, name, LOOSER)


def test_the_presence_gate_summary_follows_from_its_recorded_scores():
    """studies/presence_gate.py keeps each image's gate score; its summary (the threshold from
    the validation lesions, the shares on both sites) is what its code makes of them."""
    rows, recorded = _rows("presence_gate"), _summary("presence_gate")
    _assert_same(_summarise(_load("presence_gate"), rows), recorded, 1e-12)
    val = recorded["busbra_val"]["found"]
    assert val["hits"] >= 0.99 * val["n"] - 1  # the threshold keeps 99% of them, by its rule


def test_the_presence_variants_region_features_are_the_outlined_regions_averages():
    """The sixth variant's input: each encoder stage averaged over the outlined region, each
    position weighted by the mask's probability averaged down to the stage's grid; a
    check of one stage against numpy on the real segmenter graph."""
    import onnx
    import onnxruntime as ort

    from busdx.models.contract import FEATURES_OUTPUT, SEGMENTER_OUTPUT
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir
    from tiers import unavailable

    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    study = _load("presence_variants")
    graph = study.with_region_features(onnx.load(str(directory / "segmenter.onnx")))
    producer = {o: n for n in graph.graph.node for o in n.output}
    stages = [producer[pooled].input[0] for pooled in producer[FEATURES_OUTPUT].input]
    stage = stages[3]  # stride 16: a 14 x 14 grid
    start = sum(study._tensor_shapes(graph, stages[:3])[s][1] for s in stages[:3])
    graph.graph.output.extend([onnx.ValueInfoProto(name=stage)])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 1, 224, 224), np.float32)
    logits, features, region, tensor = session.run(
        [SEGMENTER_OUTPUT, FEATURES_OUTPUT, study.REGION_OUTPUT, stage], {"image": image})
    assert region.shape == features.shape
    side = tensor.shape[-1]
    stride = 224 // side
    weights = (1 / (1 + np.exp(-logits[0, 0]))).reshape(side, stride, side, stride).mean((1, 3))
    expected = (tensor[0] * weights).mean((1, 2)) / (weights.mean() + 1e-6)
    np.testing.assert_allclose(region[0, start:start + len(expected)], expected, rtol=1e-4,
                               atol=1e-5)


def test_the_presence_variants_small_network_is_its_seeds_mean_logit():
    """The eighth entry's check, written out as arrays: its logit is the mean over its seeds of
    what scikit-learn's own networks give on the standardised inputs, and it separates what it
    was fitted on."""
    from sklearn.neural_network import MLPClassifier

    study = _load("presence_variants")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)) * [1, 2, 3, 1, 1, 10]
    y = x[:, 0] - x[:, 1] / 2 > 0
    net = study.SmallNetwork(x, y, alpha=1.0, hidden=4, seeds=2, max_iter=300)
    z = (x - x.mean(0)) / x.std(0)
    expected = np.mean([
        np.log(p / (1 - p)) for p in (
            MLPClassifier((4,), alpha=1.0, solver="lbfgs", max_iter=300, random_state=seed)
            .fit(z, y).predict_proba(z)[:, 1] for seed in range(2))], axis=0)
    np.testing.assert_allclose(net.logits(x), expected, rtol=1e-6, atol=1e-6)
    assert ((net.logits(x) > 0) == y).mean() > 0.9


def test_the_presence_variants_summary_follows_from_its_recorded_scores():
    """studies/presence_variants.py keeps each variant's scores; its summary is what its code
    makes of them, and its reference variant is the shipped check's own selection score."""
    rows, recorded = _rows("presence_variants"), _summary("presence_variants")
    _assert_same(_summarise(_load("presence_variants"), rows), recorded, 1e-12)
    shipped = json.loads((ROOT / "evidence" / "segmenter.presence.json").read_text())
    if shipped["release"] == recorded["model_version"]:
        for site in ("busbra_validation", "breast_dev_out_of_fold"):
            assert recorded["variants"]["shipped"][site] == \
                shipped["results"]["selection"][site]["check_and_outline"]
