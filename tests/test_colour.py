"""Colour inside the scan (a Doppler box, an elastography map): the networks learned from grey
B-mode only, so it gets a warning; a grey image stored in colour, a tinted grey map, and colour
outside the scan do not."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from busdx.cli.main import main
from busdx.inference.decode import decode_bytes
from busdx.inference.pipeline import analyze
from busdx.inference.quality import (
    CHROMA,
    COLOUR_SHARE,
    check_image,
    colour_mask,
    fill_thin_colour,
)
from stand_in_models import dicom_bytes, encode, synthetic_image

GRAY = synthetic_image(200, 260)


def doppler(gray: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """``gray`` as RGB with a colour-flow box: red and blue blobs over about ``share`` of the
    image, drawn as a scanner draws flow (saturated hues replacing the grey)."""
    rng = np.random.default_rng(seed)
    rgb = np.repeat(gray[..., None], 3, axis=2).copy()
    h, w = gray.shape
    yy, xx = np.mgrid[:h, :w]
    flow = np.zeros((h, w), bool)
    while flow.mean() < share:
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        flow |= ((yy - cy) / 6.0) ** 2 + ((xx - cx) / 3.0) ** 2 <= 1
    red = rng.random((h, w)) < 0.5
    rgb[flow & red] = (220, 40, 30)
    rgb[flow & ~red] = (30, 90, 230)
    return rgb


def test_grey_arrays_have_no_colour():
    assert colour_mask(GRAY) is None
    assert colour_mask(np.repeat(GRAY[..., None], 3, axis=2)) is None
    assert colour_mask(np.repeat(GRAY[..., None], 4, axis=2).astype(np.uint8)) is None


def test_a_grey_image_saved_as_colour_jpeg_has_no_colour(fixtures_root):
    from PIL import Image

    for path in sorted((fixtures_root / "Images").glob("*.png")):
        grey = np.asarray(Image.open(path).convert("L"))
        rgb = np.repeat(grey[..., None], 3, axis=2)
        assert decode_bytes(encode(rgb, "JPEG")).colour is None, path.name


@pytest.mark.parametrize("tint", [(1.0, 0.85, 0.65), (0.7, 0.85, 1.0)], ids=["sepia", "blue"])
def test_a_tinted_grey_map_has_no_colour(tint):
    """Pale at every brightness, it turns into a plain grey image (a gain), not an overlay."""
    ramp = np.tile(np.arange(256, dtype=np.float64), (16, 1))
    assert colour_mask((ramp[..., None] * np.array(tint)).astype(np.uint8)) is None


def test_saturated_hues_are_colour_at_any_brightness():
    hues = np.array([[(200, 40, 20), (20, 90, 230), (60, 160, 60), (90, 30, 10)]], np.uint8)
    assert colour_mask(hues).all()


def test_the_chroma_level_is_on_the_full_scale_of_each_type():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[0, 0] = (0, int(CHROMA * 255) + 2, 0)
    rgb[0, 1] = (0, int(CHROMA * 255) - 2, 0)
    mask = colour_mask(rgb)
    assert mask[0, 0] and mask.sum() == 1
    assert colour_mask(rgb.astype(np.float32) / 255)[0, 0]
    wide = rgb.astype(np.uint16) * 257  # 16-bit
    wide[1, 1] = (65535, 65535, 65535)
    assert colour_mask(wide).sum() == 1


def test_the_warning_comes_above_the_share_whatever_the_ranges():
    assert not check_image(GRAY / 255.0, None, colour=COLOUR_SHARE).warnings
    check = check_image(GRAY / 255.0, None, colour=0.05)
    assert check.outside == {"colour": "high"} and "5.0% of the scan is in colour" in \
        check.warnings[0]
    assert check.outside_text == "colour high" and check.as_dict()["colour"] == 0.05


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "DICOM"])
def test_a_doppler_box_is_warned(stand_in_client, fmt):
    rgb = doppler(GRAY, 0.04)
    data = dicom_bytes(rgb, photometric="RGB") if fmt == "DICOM" else encode(rgb, fmt)
    body = stand_in_client.post("/api/analyze", files={"file": ("d", data)}).json()
    check = body["input_check"]
    assert check["outside"].get("colour") == "high"
    # JPEG halves the colour resolution: the edges of small blobs turn pale, as in a real export
    assert check["colour"] == pytest.approx(0.04, abs=0.025 if fmt == "JPEG" else 0.01)
    assert any("thin colour" in w and "filled in" in w for w in check["warnings"])
    assert check["colour_filled"] is True  # flow is thin: filled in from the grey around it


def test_a_few_coloured_marks_are_not_warned(stand_in_client):
    rgb = np.repeat(GRAY[..., None], 3, axis=2).copy()
    for y, x in ((40, 60), (120, 200)):  # two yellow caliper crosses
        rgb[y - 6:y + 7, x] = rgb[y, x - 6:x + 7] = (240, 220, 0)
    body = stand_in_client.post("/api/analyze", files={"file": ("c.png", encode(rgb, "PNG"))}).json()
    assert 0 < body["input_check"]["colour"] < COLOUR_SHARE
    assert "colour" not in body["input_check"]["outside"]


def test_colour_in_a_cut_off_frame_does_not_count(stand_in_client):
    """A screen's coloured settings column and title outside the scan are cut off with the
    frame, and with them their colour."""
    rgb = np.zeros((GRAY.shape[0] + 60, GRAY.shape[1] + 120, 3), np.uint8)
    rgb[30:30 + GRAY.shape[0], 60:60 + GRAY.shape[1]] = GRAY[..., None]
    for i in range(8):  # yellow settings, as a text column of dashes
        rgb[40 + 24 * i:48 + 24 * i, 8:46:2] = (240, 220, 0)
    rgb[8:18, 80:300:2] = (0, 220, 240)  # a cyan title
    assert colour_mask(rgb).mean() > COLOUR_SHARE  # the screen as a whole is coloured
    body = stand_in_client.post("/api/analyze", files={"file": ("s.png", encode(rgb, "PNG"))}).json()
    assert body["image"]["scan_area"] is not None
    assert body["input_check"] is None or body["input_check"]["colour"] == 0.0


def test_each_pane_of_a_capture_is_judged_on_its_own_colour(stand_in_client):
    left = np.repeat(GRAY[..., None], 3, axis=2)
    capture = np.concatenate([left, np.zeros((GRAY.shape[0], 12, 3), np.uint8),
                              doppler(GRAY, 0.05)], axis=1)
    data = encode(capture, "PNG")
    sides = {side: stand_in_client.post(f"/api/analyze?pane={side}", files={"file": ("c.png", data)})
             .json()["input_check"] for side in ("left", "right")}
    assert sides["right"]["outside"].get("colour") == "high"
    assert sides["left"] is None or "colour" not in sides["left"]["outside"]


def test_predict_flags_colour_in_its_csv(tmp_path, stand_in_dir, monkeypatch, caplog):
    monkeypatch.setenv("BUSDX_MODELS", str(stand_in_dir))
    (tmp_path / "doppler.png").write_bytes(encode(doppler(GRAY, 0.04), "PNG"))
    (tmp_path / "plain.png").write_bytes(encode(GRAY, "PNG"))
    out = tmp_path / "o.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(tmp_path / "doppler.png"), str(tmp_path / "plain.png"),
                     "--csv", str(out)]) == 0
    with out.open(newline="") as f:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert "colour high" in rows["doppler.png"]["input_unusual"]
    assert "colour" not in rows["plain.png"]["input_unusual"]


def test_thin_colour_is_filled_from_the_grey_around_it():
    grey = GRAY / 255.0
    rgb = doppler(GRAY, 0.04)
    mask = colour_mask(rgb)
    filled = fill_thin_colour(grey.astype(np.float32), mask)
    assert filled is not None
    np.testing.assert_array_equal(filled[~mask], grey[~mask].astype(np.float32))
    # flow over the speckle is replaced by speckle-like grey, not by the flow's luma
    assert abs(filled[mask].mean() - grey[mask].mean()) < 0.05


def test_solid_colour_is_not_filled(stand_in_dir):
    """An elastography-like map blended over a box: a fill would smear the lesion away, so it
    is read as it is, and warned."""
    from busdx.inference.models import Models

    rgb = np.repeat(GRAY[..., None], 3, axis=2).astype(np.float64)
    rgb[50:150, 60:200] = 0.5 * rgb[50:150, 60:200] + 0.5 * np.array([0, 200, 40])
    rgb = rgb.astype(np.uint8)
    mask = colour_mask(rgb)
    assert fill_thin_colour(GRAY / 255.0, mask) is None
    a = analyze(rgb, Models.load(stand_in_dir), render_overlays=False)
    assert a.input_check.outside["colour"] == "high" and not a.input_check.colour_filled
    assert any("in colour (a Doppler or elastography" in w for w in a.input_check.warnings)


def test_the_fill_can_be_turned_off_for_studies(stand_in_dir):
    from busdx.inference.models import Models

    models = Models.load(stand_in_dir)
    rgb = doppler(GRAY, 0.04)
    served = analyze(rgb, models, render_overlays=False)
    unfilled = analyze(rgb, models, render_overlays=False, fill_colour=False)
    assert served.input_check.colour_filled and not unfilled.input_check.colour_filled
    assert served.input_check.colour == unfilled.input_check.colour
    # the image the page shows is the one analysed
    assert not np.array_equal(served.image, unfilled.image)
