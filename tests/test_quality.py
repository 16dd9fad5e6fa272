"""The warning for images unlike the training images (busdx.inference.quality) and where it
shows: the analysis, the API, the CLI's CSV, external validation and the model card."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from busdx.errors import BusdxError
from busdx.evaluation.model_card import load_card
from busdx.inference import Models, analyze
from busdx.inference.decode import decode
from busdx.inference.quality import (
    check_image,
    fit_long_side,
    fit_ranges,
    image_statistics,
    shrink_to,
)
from stand_in_models import STAND_IN_CARD, build_stand_in_models

RANGES = {"brightness": [0.15, 0.6], "contrast": [0.07, 0.26], "texture": [0.025, 0.09]}


def _image(fixtures_root) -> np.ndarray:
    return decode(str(sorted((fixtures_root / "Images").glob("*.png"))[0])).image


def test_statistics_follow_the_changes_they_name(fixtures_root):
    img = _image(fixtures_root)
    base = image_statistics(img)
    assert 0 < base["brightness"] < 1 and base["contrast"] > 0 and base["texture"] > 0
    blurred = image_statistics(np.clip(gaussian_filter(img, 2.0), 0, 1))
    assert blurred["texture"] < 0.5 * base["texture"]
    noisy = np.clip(img * (1 + 0.3 * np.random.default_rng(0).standard_normal(img.shape)), 0, 1)
    assert image_statistics(noisy)["texture"] > 2 * base["texture"]
    brighter = image_statistics(np.clip(img + 0.15, 0, 1))
    assert brighter["brightness"] > base["brightness"] + 0.1
    flat = image_statistics(np.clip(base["brightness"] + 0.5 * (img - base["brightness"]), 0, 1))
    assert flat["contrast"] < 0.6 * base["contrast"]
    # black margins are not tissue: padding the image changes nothing but a little texture
    padded = image_statistics(np.pad(img, 40))
    assert padded["brightness"] == pytest.approx(base["brightness"], rel=1e-3)
    assert padded["contrast"] == pytest.approx(base["contrast"], rel=1e-3)


def test_an_all_black_image_and_bad_shapes():
    assert image_statistics(np.zeros((20, 20), np.float32)) == {
        "brightness": 0.0, "contrast": 0.0, "texture": 0.0}
    with pytest.raises(ValueError, match="2-D image"):
        image_statistics(np.zeros((2, 50), np.float32))
    with pytest.raises(ValueError, match="2-D image"):
        image_statistics(np.zeros((5, 5, 3), np.float32))


def test_warnings_name_the_statistic_and_its_direction(fixtures_root):
    img = _image(fixtures_root)
    inside = check_image(img, RANGES)
    assert not inside.unusual and inside.warnings == ()
    blurred = check_image(np.clip(gaussian_filter(img, 3.0), 0, 1), RANGES)
    assert blurred.outside == {"texture": "low"}
    assert len(blurred.warnings) == 1 and "smoother" in blurred.warnings[0]
    assert "may not hold" in blurred.warnings[0]
    dark = check_image(np.clip(img - 0.3, 0, 1) * 0.3, RANGES)
    assert dark.outside["brightness"] == "low" and "darker" in " ".join(dark.warnings)
    # no ranges in the card: statistics only, never a warning
    assert check_image(img, None).outside == {} and check_image(img, None).statistics


def _upsampled(img: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = img.shape
    big = Image.fromarray(img, mode="F").resize((round(w * factor), round(h * factor)),
                                                Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32), 0, 1)


def test_texture_at_a_fixed_long_side_forgives_more_pixels_but_not_blur(fixtures_root):
    """A scanner with twice BUS-BRA's pixels is not a blurred image: compared at the training
    images' long side it keeps most of its texture, where at its own resolution it loses most."""
    img = _image(fixtures_root)
    side = max(img.shape)
    base = image_statistics(img, side)["texture"]
    assert base == image_statistics(img)["texture"]  # never up-sampled, so no change here
    for factor in (1.5, 2.0, 3.0):
        big = _upsampled(img, factor)
        assert image_statistics(big)["texture"] < 0.6 * base
        assert image_statistics(big, side)["texture"] > 0.75 * base, factor
        assert max(shrink_to(big, side).shape) == side
    blurred = np.clip(gaussian_filter(img, 2.0), 0, 1)
    assert image_statistics(blurred, side)["texture"] < 0.5 * base
    # brightness and contrast are taken at the file's resolution either way
    assert image_statistics(img, 100)["brightness"] == image_statistics(img)["brightness"]
    assert fit_long_side([(300, 200), (100, 400), (50, 50)]) == 300
    with pytest.raises(ValueError):
        fit_long_side([])


def test_fit_ranges_are_percentiles():
    rows = [{"brightness": b, "contrast": b / 2, "texture": b / 10} for b in np.linspace(0, 1, 201)]
    ranges = fit_ranges(rows, (5, 95))
    assert ranges["brightness"] == pytest.approx([0.05, 0.95])
    assert ranges["texture"] == pytest.approx([0.005, 0.095])
    with pytest.raises(ValueError):
        fit_ranges([])


@pytest.fixture(scope="module")
def checked_models(tmp_path_factory):
    card = {**STAND_IN_CARD, "input_check": {"ranges": RANGES}}
    return Models.load(build_stand_in_models(tmp_path_factory.mktemp("models"), card))


def test_the_analysis_carries_the_check(checked_models, fixtures_root):
    img = _image(fixtures_root)
    ok = analyze(img, checked_models, render_overlays=False)
    assert ok.input_check is not None and not ok.input_check.unusual
    blurred = analyze(np.clip(gaussian_filter(img, 3.0), 0, 1), checked_models,
                      render_overlays=False)
    assert blurred.input_check.outside == {"texture": "low"}
    # a caution, not a refusal: the call is still made
    assert blurred.label in ("benign", "malignant", "no lesion")
    body = blurred.to_json(images=False)
    assert body["input_check"]["outside"] == {"texture": "low"}
    assert len(body["input_check"]["warnings"]) == 1


def test_without_ranges_in_the_card_there_is_no_check(fixtures_root, tmp_path):
    models = Models.load(build_stand_in_models(tmp_path))
    result = analyze(_image(fixtures_root), models, render_overlays=False)
    assert result.input_check is None and result.to_json(images=False)["input_check"] is None


def test_bad_ranges_in_a_card_are_refused(tmp_path):
    card = {**STAND_IN_CARD, "input_check": {"ranges": {"texture": [0.09, 0.02]}}}
    with pytest.raises(BusdxError, match="input check range"):
        Models.load(build_stand_in_models(tmp_path, card))
    card = {**STAND_IN_CARD, "input_check": {"ranges": RANGES, "texture_long_side": "big"}}
    with pytest.raises(BusdxError, match="texture_long_side"):
        Models.load(build_stand_in_models(tmp_path, card))


def test_the_card_long_side_reaches_the_analysis(fixtures_root, tmp_path):
    """An up-sampled image is warned as smoother under a card fitted at the file's resolution
    (no texture_long_side), and not under one that names the long side its ranges hold at."""
    img = _image(fixtures_root)
    ranges = {"texture": [0.7 * image_statistics(img)["texture"], 1.0]}
    old = Models.load(build_stand_in_models(tmp_path / "old", {
        **STAND_IN_CARD, "input_check": {"ranges": ranges}}))
    new = Models.load(build_stand_in_models(tmp_path / "new", {
        **STAND_IN_CARD, "input_check": {"ranges": ranges, "texture_long_side": max(img.shape)}}))
    assert old.input_texture_long_side is None and new.input_texture_long_side == max(img.shape)
    big = _upsampled(img, 2.0)
    assert analyze(big, old, render_overlays=False).input_check.outside == {"texture": "low"}
    assert not analyze(big, new, render_overlays=False).input_check.unusual
    blurred = np.clip(gaussian_filter(img, 3.0), 0, 1)
    assert analyze(blurred, new, render_overlays=False).input_check.outside == {"texture": "low"}


def test_api_and_csv_show_the_warning(checked_models, fixtures_root, tmp_path):
    from fastapi.testclient import TestClient
    from PIL import Image

    from busdx.api.app import create_app
    from busdx.cli.main import main

    img = _image(fixtures_root)
    blurred = tmp_path / "blurred.png"
    Image.fromarray(np.rint(np.clip(gaussian_filter(img, 3.0), 0, 1) * 255).astype(np.uint8)
                    ).save(blurred)
    with TestClient(create_app(models=checked_models)) as client:
        answer = client.post("/api/analyze", files={"file": ("b.png", blurred.read_bytes())})
    assert answer.status_code == 200
    assert answer.json()["input_check"]["outside"] == {"texture": "low"}

    out = tmp_path / "out.csv"
    rc = main(["predict", str(blurred), str(sorted((fixtures_root / "Images").glob("*.png"))[0]),
               "--csv", str(out), "--models", str(checked_models.directory)])
    assert rc == 0
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert rows[str(blurred)]["input_unusual"] == "texture low"
    assert [r["input_unusual"] for p, r in rows.items() if p != str(blurred)] == [""]


def test_the_card_section_renders(tmp_path):
    from busdx.evaluation.card_markdown import render_history

    card = {**STAND_IN_CARD, "input_check": {
        "ranges": RANGES, "rule": "the 0.5th to 99.5th percentiles", "statistics": {},
        "validation": {"n": 226, "unusual": 8}, "test": {"n": 383, "unusual": 12},
        "command": "busdx evaluate input-check"}}
    text = render_history(card)
    assert "## Images unlike the training images" in text
    assert "8 of 226 validation images and 12 of 383 test images" in text
    assert "| texture |" in text


def test_the_bundled_card_reproduces_its_ranges(busbra_root):
    """The ranges and counts in the bundled card come from `busdx evaluate input-check`."""
    from busdx.evaluation.input_check import input_check_section
    from busdx.inference.models import default_models_dir

    card = load_card(default_models_dir())
    recorded = card.get("input_check")
    if not recorded:
        pytest.skip("the bundled card has no input_check")
    section = input_check_section(str(busbra_root))
    for name, (lo, hi) in recorded["ranges"].items():
        assert section["ranges"][name] == pytest.approx([lo, hi], rel=1e-6), name
    for part in ("validation", "test"):
        assert section[part] == recorded[part]


def test_an_image_that_is_not_an_ultrasound_is_clearly_warned(fixtures_root, tmp_path):
    """A colour photograph and a chart get a warning, first, that they may not be ultrasound
    images at all (the bundled release's ranges); a BUS-BRA scan does not."""
    import io

    from PIL import Image, ImageDraw

    from busdx.release import load_release
    from stand_in_models import REPO

    check = load_release(REPO / "models").input_check
    card = {**STAND_IN_CARD, "input_check": {
        "ranges": {k: list(v) for k, v in check.ranges.items()},
        "texture_long_side": check.texture_long_side}}
    real_models = Models.load(build_stand_in_models(tmp_path, card))
    scan = analyze(_image(fixtures_root), real_models, render_overlays=False)
    assert not any(w.startswith("This may not be") for w in scan.input_check.warnings)

    yy, xx = np.mgrid[0:400, 0:500]
    photo = np.stack([120 + 100 * np.sin(xx / 40), 100 + 80 * np.cos(yy / 30),
                      60 + 50 * np.sin((xx + yy) / 50)], -1).clip(0, 255).astype(np.uint8)
    chart = Image.new("RGB", (500, 400), "white")
    draw = ImageDraw.Draw(chart)
    draw.line([(50, 350), (450, 350)], fill="black", width=3)
    for i, v in enumerate([100, 200, 150, 250]):
        draw.rectangle([80 + i * 90, 350 - v, 140 + i * 90, 350], fill=(30, 30, 30))
    for picture in (Image.fromarray(photo), chart):
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        result = analyze(buf.getvalue(), real_models, render_overlays=False)
        assert result.input_check.warnings[0].startswith("This may not be a breast ultrasound")


def test_the_bundled_release_warns_of_the_pictures_that_are_not_ultrasound_as_recorded():
    """Every picture in tests/fixtures/not-ultrasound (photographs, textures, microscopy, eye
    images, charts, a page, CT and MR files) analysed by the bundled release: the number warned
    'may not be a breast ultrasound' or refused is the one its evidence records, and the card
    shows; CT and MR files are refused outright."""
    from pathlib import Path

    from busdx.evaluation.appearance import folder_images
    from busdx.inference.pipeline import NO_LESION, WITHHELD, WITHHELD_NOTE
    from busdx.inference.quality import NOT_ULTRASOUND
    from stand_in_models import real_models_dir

    directory = real_models_dir()
    if directory is None:
        pytest.skip("the bundled models are not at hand")
    appearance = (load_card(directory).get("input_check") or {}).get("appearance")
    if not appearance:
        pytest.skip("the bundled release has no appearance check")
    models = Models.load(directory, threads=2)
    folder = Path(__file__).parent / "fixtures" / "not-ultrasound"
    flags, withheld = {}, 0
    for name, image in folder_images(folder):
        if image is None:
            flags[name] = True
            continue
        analysis = analyze(np.ascontiguousarray(image), models, render_overlays=False)
        check = analysis.input_check
        flags[name] = bool(check and check.warnings and check.warnings[0].startswith(
            NOT_ULTRASOUND))
        if flags[name]:  # warned: no call and no band, whatever the networks say
            assert analysis.not_ultrasound and analysis.risk is None, name
            assert analysis.label == (WITHHELD if analysis.lesion_found else NO_LESION), name
            if analysis.lesion_found:
                assert analysis.note == WITHHELD_NOTE, name
                withheld += 1
    assert withheld  # some pictures get an outline: the call is what is withheld
    assert flags["pydicom_CT_small.dcm"] and flags["pydicom_MR_small.dcm"]
    recorded = appearance["results"]["not_ultrasound:not-ultrasound"]
    assert (sum(flags.values()), len(flags)) == (recorded["warned"], recorded["n"])


def test_the_appearance_fit_refuses_a_missing_folder_before_any_work(tmp_path, capsys):
    """A mistyped --not-ultrasound folder stops the command at once, before the minutes of
    fitting and the rewrite of the staging graph, with the folder named."""
    from busdx.cli.main import main

    missing = tmp_path / "not-there"
    assert main(["evaluate", "appearance", "--models", str(tmp_path / "stage"),
                 "--not-ultrasound", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "stage").exists()
