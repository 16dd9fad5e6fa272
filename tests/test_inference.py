"""The inference pipeline end to end with the stand-in ONNX models (no torch at serving time)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from busdx.errors import BusdxError
from busdx.inference import Models, analyze, default_models_dir
from busdx.inference.decode import decode_bytes
from busdx.inference.errors import CorruptImage, EmptyInput, TooLarge, UnsupportedFormat
from busdx.inference.pipeline import NO_LESION_NOTE
from busdx.inference.risk import risk_band
from busdx.numeric import sigmoid
from busdx.release import load_release, with_graphs, write_release
from stand_in_models import (
    STAND_IN_CARD,
    build_stand_in_models,
    calibration_region,
    dicom_bytes,
    encode,
    synthetic_image,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models.load(build_stand_in_models(tmp_path_factory.mktemp("models")))


def _png(img: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(img)))


def test_fixture_image_full_analysis(models, fixtures_root):
    path = sorted((fixtures_root / "Images").glob("*.png"))[0]
    result = analyze(path, models)
    h, w = np.asarray(Image.open(path)).shape[:2]
    assert (result.height, result.width) == (h, w)
    assert 0.0 <= result.probability <= 1.0
    assert result.probability == pytest.approx(sigmoid(result.logit / result.temperature))
    assert result.temperature == STAND_IN_CARD["classifier"]["temperature"]
    expected = "malignant" if result.probability >= result.threshold else "benign"
    assert result.label == expected
    assert result.risk == risk_band(result.probability)
    assert result.mask.shape == (h, w) and set(np.unique(result.mask)) <= {0, 1}
    assert result.lesion_found and result.note == ""
    assert result.measurements is not None and result.measurements.units == "px"
    assert result.measurements.area_px == int(result.mask.sum())
    assert result.heatmap.shape == (h, w)
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.crop_box is not None
    for stage in ("decode", "segment", "classify", "heatmap", "measure", "render", "total"):
        assert result.timings_ms[stage] >= 0.0
    pngs = result.overlays.as_dict()
    for name, data in pngs.items():
        assert _png(data).shape[:2] == (h, w), name
    assert set(np.unique(_png(pngs["mask"]))) <= {0, 255}
    assert _png(pngs["outline"]).shape[2] == 4 and _png(pngs["heatmap"]).shape[2] == 4
    body = result.to_json()
    json.dumps(body)  # plain JSON types only
    assert "not a diagnosis" in body["disclaimer"]


def test_mask_is_one_component_from_the_segmenter(models):
    result = analyze(synthetic_image(), models, render_overlays=False)
    from busdx.inference.components import largest_component

    assert (largest_component(result.mask) == result.mask).all()
    assert result.overlays is None and "render" not in result.timings_ms
    # The dark oval of the synthetic image is inside the mask.
    assert result.mask[int(200 * 0.45), 130] == 1


def test_no_lesion_makes_no_call(models):
    """Without an outline no benign or malignant call is made (API, CSV, page: the label says
    "no lesion") and no risk band is given (a band grades a lesion); the whole image's
    probability is kept for reference."""
    from busdx.inference.batch import row_for

    # bright speckle: no dark lesion for the stand-in segmenter (a blank image is refused)
    bright = np.random.default_rng(0).integers(200, 256, (180, 240)).astype(np.uint8)
    result = analyze(bright, models)
    assert not result.lesion_found
    assert result.label == "no lesion" and result.to_json()["label"] == "no lesion"
    assert result.measurements is None
    assert result.note == NO_LESION_NOTE
    assert result.crop_box is None
    assert 0.0 <= result.probability <= 1.0
    assert result.mask.sum() == 0
    assert result.to_json()["measurements"] is None
    assert result.risk is None and result.to_json(images=False)["risk_band"] is None
    row = row_for("bright.png", result)
    assert row["label"] == "no lesion" and row["risk_band"] == "" and row["risk_text"] == ""
    assert row["lesion_found"] == "false" and row["probability"] != ""


def test_whole_image_classifier_heatmap_maps_back(tmp_path):
    card = json.loads(json.dumps(STAND_IN_CARD))
    card["classifier"]["input"] = "image"
    models = Models.load(build_stand_in_models(tmp_path, card))
    image = synthetic_image(150, 300)
    result = analyze(image, models)
    assert result.crop_box is None and result.lesion_found
    assert result.heatmap.shape == image.shape
    # The stand-in CAM is brightest where the image is brightest, never in the letterbox bars.
    assert result.heatmap.max() == pytest.approx(1.0, abs=0.05)


def test_two_view_input_pairs_each_crop_with_the_whole_image():
    from dataclasses import replace

    from busdx.data.crop import CropConfig, lesion_crop
    from busdx.inference.models import ClassifierSettings
    from busdx.inference.pipeline import classifier_inputs

    settings = ClassifierSettings(1.0, 0.3, "both", CropConfig(size=64, context=0.3),
                                  (0.15, 0.3))
    image = synthetic_image(150, 300)
    mask = np.zeros(image.shape, np.uint8)
    mask[40:90, 100:180] = 1
    x, box, primary = classifier_inputs(image, mask, settings)
    whole = lesion_crop(image, None, settings.crop)[0]
    crop = lesion_crop(image, mask, settings.crop)[0]
    assert x.shape == (2, 2, 64, 64) and x.dtype == np.float32 and primary == 1
    assert np.allclose(x[:, 1], whole) and np.allclose(x[primary, 0], crop)
    assert box is not None
    single, _, _ = classifier_inputs(image, mask, replace(settings, input="crop"))
    assert single.shape == (2, 1, 64, 64) and np.array_equal(single[:, 0], x[:, 0])
    # no lesion: both views are the whole image
    empty, box, _ = classifier_inputs(image, np.zeros_like(mask), settings)
    assert empty.shape == (1, 2, 64, 64) and box is None
    assert np.allclose(empty[0, 0], whole) and np.allclose(empty[0, 1], whole)


def test_sessions_fix_the_batch_sizes_one_analysis_uses(tmp_path):
    from busdx.inference.models import open_session

    directory = build_stand_in_models(tmp_path / "one")
    models = Models.load(directory)
    # one crop: both batch sizes are known, so ONNX Runtime can fold the shape arithmetic
    assert models.segmenter.get_inputs()[0].shape[0] == 1
    assert models.classifier.get_inputs()[0].shape[0] == 1
    image = synthetic_image(150, 300)
    dynamic = Models.load(directory)
    dynamic.segmenter = open_session(directory / "segmenter.onnx", 1)
    dynamic.classifier = open_session(directory / "classifier.onnx", 1)
    a, b = analyze(image, models, render_overlays=False), analyze(image, dynamic,
                                                                  render_overlays=False)
    assert a.logit == b.logit and np.array_equal(a.mask, b.mask)
    # several crops: without a lesion the batch is 1, with one it is the number of crops
    card = json.loads(json.dumps(STAND_IN_CARD))
    card["classifier"]["crop"] = {"size": 224, "context": 0.3, "contexts": [0.15, 0.3]}
    several = Models.load(build_stand_in_models(tmp_path / "several", card))
    assert several.segmenter.get_inputs()[0].shape[0] == 1
    assert not isinstance(several.classifier.get_inputs()[0].shape[0], int)
    assert analyze(image, several, render_overlays=False).lesion_found


def test_card_and_classifier_must_agree_on_views(tmp_path):
    card = json.loads(json.dumps(STAND_IN_CARD))
    card["classifier"]["input"] = "both"
    with pytest.raises(BusdxError, match="view"):
        Models.load(build_stand_in_models(tmp_path, card))


def test_calibrated_mm_measurements_from_dicom(models):
    image = synthetic_image()
    region = calibration_region(0.1, image.shape[1], image.shape[0])
    result = analyze(dicom_bytes(image, regions=[region]), models)
    m = result.measurements
    assert result.format == "DICOM" and result.pixel_spacing_mm == pytest.approx((0.1, 0.1))
    assert m.units == "mm"
    assert m.area == pytest.approx(m.area_px * 0.01)
    px = analyze(image, models).measurements
    assert m.longest_diameter == pytest.approx(px.longest_diameter * 0.1, rel=1e-6)


def _formats():
    gray = synthetic_image(90, 120)
    g16 = gray.astype(np.uint16) * 257
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full(gray.shape + (1,), 255, np.uint8)], axis=2)
    return {
        "png8": (encode(gray, "PNG"), gray / 255.0, 1e-6),
        "png16": (encode(g16, "PNG"), g16 / 65535.0, 1e-6),
        "png_rgb": (encode(rgb, "PNG"), gray / 255.0, 1e-3),
        "png_rgba": (encode(rgba, "PNG"), gray / 255.0, 1e-3),
        "jpeg": (encode(gray, "JPEG"), gray / 255.0, 0.15),
        "jpeg_rgb": (encode(rgb, "JPEG"), gray / 255.0, 0.15),
        "bmp": (encode(gray, "BMP"), gray / 255.0, 1e-6),
        "tiff8": (encode(gray, "TIFF"), gray / 255.0, 1e-6),
        "tiff16": (encode(g16, "TIFF"), g16 / 65535.0, 1e-6),
        "dicom": (dicom_bytes(gray), gray / 255.0, 1e-6),
    }


@pytest.mark.parametrize("name", list(_formats()))
def test_every_format_decodes_to_the_same_gray_image(name):
    data, expected, tol = _formats()[name]
    out = decode_bytes(data)
    assert out.image.dtype == np.float32 and out.image.shape == expected.shape
    assert np.abs(out.image - expected).max() <= tol


def test_rgba_alpha_is_composited_on_black():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 255
    out = decode_bytes(encode(rgba, "PNG")).image
    assert out[:, :10].min() > 0.7 and out[:, 10:].max() == 0.0


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(EmptyInput):
        decode_bytes(b"")
    with pytest.raises(UnsupportedFormat):
        decode_bytes(b"hello, this is text")
    gif = io.BytesIO()
    Image.new("L", (20, 20)).save(gif, format="GIF")
    with pytest.raises(UnsupportedFormat):
        decode_bytes(gif.getvalue())
    png = encode(synthetic_image(), "PNG")
    with pytest.raises(CorruptImage):
        decode_bytes(png[: len(png) // 2])
    with pytest.raises(TooLarge):
        decode_bytes(png, max_pixels=100)


def test_missing_models_give_a_clear_error(tmp_path):
    with pytest.raises(BusdxError, match="no release.json"):
        Models.load(tmp_path)


def test_release_without_threshold_is_refused(tmp_path):
    directory = build_stand_in_models(tmp_path)
    release = json.loads((directory / "release.json").read_text())
    del release["classifier"]["threshold"]
    (directory / "release.json").write_text(json.dumps(release))
    with pytest.raises(BusdxError, match="threshold"):
        Models.load(directory)


def test_a_graph_other_than_the_release_describes_is_refused(tmp_path):
    directory = build_stand_in_models(tmp_path)
    (directory / "segmenter.onnx").write_bytes((directory / "segmenter.onnx").read_bytes() + b" ")
    with pytest.raises(BusdxError, match="sha256"):
        Models.load(directory)


def test_model_with_wrong_interface_is_refused(tmp_path):
    directory = build_stand_in_models(tmp_path)
    (directory / "classifier.onnx").write_bytes((directory / "segmenter.onnx").read_bytes())
    write_release(with_graphs(load_release(directory), directory), directory)
    with pytest.raises(BusdxError, match="contract"):
        Models.load(directory)


def test_default_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BUSDX_MODELS", str(tmp_path))
    assert default_models_dir() == tmp_path
    monkeypatch.delenv("BUSDX_MODELS")
    assert default_models_dir().name == "models"
    assert (default_models_dir().parent / "src" / "busdx").is_dir()


def test_sigmoid_is_stable():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(0.0) == 0.5
    assert math.isclose(sigmoid(2.0), 1 / (1 + math.exp(-2.0)))


def _imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    check = f"{code}\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + check], check=True,
                         capture_output=True, text=True).stdout.strip()
    return [m for m in out.split(",") if m]


def test_serving_code_never_imports_training_libraries():
    serving = "import busdx.inference.pipeline, busdx.api.app, busdx.cli.predict, busdx.cli.serve"
    assert _imported_after(serving, ("torch", "scipy", "matplotlib", "timm", "sklearn")) == []
    # The CLI's parser imports every command module: none may import torch at module level.
    cli = "import busdx.cli.main\nbusdx.cli.main.build_parser()"
    assert _imported_after(cli, ("torch", "timm")) == []


def test_jpeg_exif_orientation_is_applied():
    img = Image.fromarray(synthetic_image(60, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_bytes(buf.getvalue()).image.shape == (100, 60)


def test_large_images_are_displayed_downscaled_but_the_mask_is_full_size():
    from busdx.inference.overlay import render

    image = synthetic_image(300, 400) / 255.0
    mask = (image < 0.3).astype(np.uint8)
    pngs = render(image, mask, image, max_side=100).as_dict()
    assert _png(pngs["mask"]).shape == (300, 400)
    for name in ("image", "outline", "heatmap", "overlay", "heatmap_overlay"):
        assert _png(pngs[name]).shape[:2] == (75, 100), name


def test_components_match_scipy_on_random_masks():
    """largest_component and fill_holes against scipy.ndimage on many random masks (scipy is a
    test-only dependency: serving has none)."""
    ndi = pytest.importorskip("scipy.ndimage")
    from busdx.inference.components import fill_holes, largest_component

    rng = np.random.default_rng(0)
    for case in range(300):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        if case % 2:
            mask = ndi.binary_opening(mask)
        labels, n = ndi.label(mask, structure=np.ones((3, 3)))
        expected = np.zeros((h, w), dtype=np.uint8)
        if n:
            sizes = ndi.sum(mask, labels, range(1, n + 1))
            expected = (labels == int(np.argmax(sizes)) + 1).astype(np.uint8)
        assert np.array_equal(largest_component(mask), expected), case
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask).astype(np.uint8)), case


def test_the_heatmap_fades_out_at_its_crop_and_says_when_it_is_empty(fixtures_root):
    """No square patch: on every edge of the crop window that lies inside the image, the
    heatmap is (nearly) nothing; an empty heatmap is said in the answer (heatmap_shown)."""
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir
    from tiers import unavailable

    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    models = Models.load(directory)
    shown = {}
    for path in sorted((fixtures_root / "Images").glob("*.png")):
        result = analyze(path.read_bytes(), models)
        heat, box = result.heatmap, result.crop_box
        shown[path.name] = result.to_json(images=False)["heatmap_shown"]
        assert shown[path.name] == bool(heat.max() >= 0.1)
        # and it is what the heatmap layer shows: some pixel drawn, or none
        assert shown[path.name] == bool((_png(result.overlays.heatmap)[..., 3] > 0).any())
        if box is None:
            continue
        h, w = heat.shape
        bottom, right = box.top + box.side - 1, box.left + box.side - 1
        cols = slice(max(box.left, 0), min(right + 1, w))
        rows = slice(max(box.top, 0), min(bottom + 1, h))
        edges = ([heat[box.top, cols]] if box.top >= 0 else []) + \
                ([heat[bottom, cols]] if bottom < h else []) + \
                ([heat[rows, box.left]] if box.left >= 0 else []) + \
                ([heat[rows, right]] if right < w else [])
        for edge in edges:
            assert edge.max() <= 1e-3, path.name
    assert any(shown.values()) and not all(shown.values())  # both cases among the fixtures
