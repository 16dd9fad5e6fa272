"""The scan area: a screen capture's black frame is cut off before the networks see the image,
and an image already cut to its scan area (all of BUS-BRA's) is analysed exactly as before."""

from __future__ import annotations

import numpy as np
import pytest

from busdx.data.index import load_index
from busdx.data.preprocess import load_gray
from busdx.inference.models import Models
from busdx.inference.pipeline import analyze
from busdx.inference.scan_area import ScanArea, find_scan_area
from stand_in_models import build_stand_in_models, real_models_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    directory = real_models_dir() or build_stand_in_models(tmp_path_factory.mktemp("models"))
    return Models.load(directory, threads=1)


@pytest.fixture(scope="module")
def scan(fixtures_root) -> np.ndarray:
    return load_gray(load_index(fixtures_root).records[2].image_path)


def _framed(image: np.ndarray, top: int, bottom: int, left: int, right: int,
            noise: bool = True) -> np.ndarray:
    h, w = image.shape
    out = np.zeros((top + h + bottom, left + w + right), dtype=np.float32)
    if noise:  # a JPEG'd black frame is not exactly 0
        out += np.random.default_rng(0).integers(0, 4, out.shape) / 255
    out[top:top + h, left:left + w] = image
    return out


def test_a_black_frame_is_found_exactly(scan):
    h, w = scan.shape
    assert find_scan_area(scan).is_whole(scan.shape)
    area = find_scan_area(_framed(scan, 40, 60, 90, 70))
    assert area == ScanArea(40, 40 + h, 90, 90 + w)


def test_a_framed_image_is_analysed_as_its_scan_area(scan, models):
    h, w = scan.shape
    plain = analyze(scan, models, render_overlays=False)
    assert plain.scan_area is None
    framed = _framed(scan, 40, 60, 90, 70)
    a = analyze(framed, models, render_overlays=False)
    assert a.scan_area == ScanArea(40, 40 + h, 90, 90 + w)
    assert a.logit == pytest.approx(plain.logit, abs=1e-5)
    assert a.label == plain.label and a.risk.name == plain.risk.name
    # the outputs are on the whole image's grid, nothing of them in the frame
    assert a.mask.shape == framed.shape and a.heatmap.shape == framed.shape
    np.testing.assert_array_equal(a.mask[40:40 + h, 90:90 + w], plain.mask)
    assert a.mask.sum() == plain.mask.sum()
    np.testing.assert_allclose(a.heatmap[40:40 + h, 90:90 + w], plain.heatmap, atol=1e-6)
    if plain.crop_box is not None:
        assert (a.crop_box.top, a.crop_box.left) == (plain.crop_box.top + 40,
                                                     plain.crop_box.left + 90)
    assert a.measurements == plain.measurements
    assert a.to_json(images=False)["image"]["scan_area"] == {"top": 40, "left": 90, "width": w,
                                                             "height": h}
    # the frame analysed as part of the image reads differently: that is what the cut is for
    whole = analyze(framed, models, render_overlays=False, trim_margins=False)
    assert whole.scan_area is None and whole.logit != pytest.approx(plain.logit, abs=1e-5)


def test_a_dark_far_field_alone_is_not_cut(scan):
    """Deep rows where the echo has faded look like a margin; without a frame elsewhere the
    bottom is kept, as on 20 of BUS-BRA's scans."""
    h, w = scan.shape
    assert find_scan_area(_framed(scan, 0, 80, 0, 0)).is_whole((h + 80, w))
    # in a frame, the bottom margin goes too
    assert find_scan_area(_framed(scan, 0, 80, 30, 0)) == ScanArea(0, h, 30, 30 + w)


def test_a_border_row_or_two_is_not_a_frame(scan):
    """A darkened scan's faint top rows are not a screen's frame, and do not license cutting
    its faded far field either (seen on validation images darkened by 0.15)."""
    h, w = scan.shape
    image = _framed(scan, 2, 60, 0, 0, noise=False)
    assert find_scan_area(image).is_whole(image.shape)


def test_a_screen_s_annotations_are_cut_off_with_its_frame(scan):
    """Text, a depth scale and a logo in the frame are not tissue: the cut goes past them."""
    h, w = scan.shape
    framed = _framed(scan, 30, 20, 100, 40)
    framed[40:52, 6:80:3] = 0.9  # a line of text (thin strokes) in the left margin
    framed[60:80, 20:60] = 0.85  # a solid label
    framed[30:30 + h, 100 + w + 4] = 1.0  # a depth scale's line beside the scan
    framed[5:12, 110:400] = 0.95  # a title line across the top
    area = find_scan_area(framed)
    assert (area.top, area.bottom, area.left) == (30, 30 + h, 100)
    assert 100 + w <= area.right <= 100 + w + 5  # the scale's line may stay: it is 4 px out


def test_a_jpeg_screen_s_annotations_are_cut_off_too(scan):
    """Compression rings around text: many dim pixels that must not pass for tissue."""
    import io

    from PIL import Image

    from busdx.inference.decode import decode_bytes

    h, w = scan.shape
    framed = _framed(scan, 30, 20, 100, 40)
    for i in range(10):  # settings text down the left margin
        framed[40 + 20 * i:48 + 20 * i, 8:70:2] = 0.9
    framed[6:14, 110:300:2] = 0.95  # the title
    buffer = io.BytesIO()
    Image.fromarray(np.round(framed * 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    area = find_scan_area(decode_bytes(buffer.getvalue()).image)
    assert 22 <= area.top <= 30 and 92 <= area.left <= 100  # no tissue lost, little screen kept
    assert area.bottom >= 30 + h and area.right >= 100 + w


def test_text_in_a_faded_far_field_keeps_the_far_field(scan):
    """Below the scan the bottom edge follows the black frame rule alone: text burned into a
    dark far field (as on some of BUS-BRA's scans) does not license cutting the far field."""
    h, w = scan.shape
    image = _framed(scan, 0, 0, 60, 60, noise=False)
    image[h - 60:, 60:60 + w] = np.minimum(image[h - 60:, 60:60 + w], 3 / 255)  # faded
    image[h - 20:h - 10, 100:200:2] = 0.9  # "MAMA ESQUERDA"
    area = find_scan_area(image)
    # the text stops the cut; only the black rows under it go, as in any framed image
    assert (area.left, area.right, area.bottom) == (60, 60 + w, h - 10)


def test_dim_texture_in_the_frame_stops_the_cut(scan):
    """What is dim and textured like tissue beside the scan (a faded far field, a darkened
    scan's edge) is kept, however sparse: annotations are drawn bright."""
    h, w = scan.shape
    framed = _framed(scan, 0, 0, 100, 0)
    rng = np.random.default_rng(1)
    dim = rng.random((h, 100)) < 0.05
    framed[:, :100][dim] = 0.1  # sparse dim speckle
    assert find_scan_area(framed).left == 0


def test_a_mostly_black_image_is_analysed_whole():
    image = np.zeros((300, 400), dtype=np.float32)
    image[100:130, 100:130] = 0.5
    assert find_scan_area(image).is_whole(image.shape)
    assert find_scan_area(np.zeros((50, 50), dtype=np.float32)).is_whole((50, 50))


@pytest.mark.full_data
def test_every_busbra_scan_is_its_own_scan_area(busbra_root):
    """The networks were trained, and the card scored, on these images uncut: the cut must
    leave every one of them alone."""
    cut = []
    for r in load_index(busbra_root).records:
        image = load_gray(r.image_path)
        if not find_scan_area(image).is_whole(image.shape):
            cut.append(r.id)
    assert cut == []


def test_the_api_and_the_csv_say_what_was_analysed(scan, models, tmp_path):
    import csv
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from busdx.api.app import create_app
    from busdx.cli.main import main

    h, w = scan.shape
    framed = (_framed(scan, 20, 30, 50, 40) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(framed).save(buffer, format="PNG")
    (tmp_path / "framed.png").write_bytes(buffer.getvalue())
    with TestClient(create_app(models.directory)) as client:
        body = client.post("/api/analyze", files={"file": ("framed.png", buffer.getvalue(),
                                                           "image/png")}).json()
    assert body["image"]["scan_area"] == {"top": 20, "left": 50, "width": w, "height": h}
    assert (body["image"]["width"], body["image"]["height"]) == (w + 90, h + 50)
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "framed.png"), "--csv", str(out), "--models",
                 str(models.directory)]) == 0
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["scan_area"] == f"50 20 {w} {h}"


# ------------------------------------------------------------------------ dual-view captures


def _capture(fixtures_root, gap: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BUS-BRA's bus_0007 halves put back side by side, as a scanner's dual view shows them,
    in a black frame."""
    left = load_gray(fixtures_root / "Images" / "bus_0007-l.png")
    right = load_gray(fixtures_root / "Images" / "bus_0007-r.png")
    h = max(left.shape[0], right.shape[0])
    capture = np.zeros((h + 60, left.shape[1] + gap + right.shape[1] + 100), np.float32)
    capture[30:30 + left.shape[0], 50:50 + left.shape[1]] = left
    x = 50 + left.shape[1] + gap
    capture[30:30 + right.shape[0], x:x + right.shape[1]] = right
    return capture, left, right


def test_a_dual_view_capture_splits_into_its_two_scans(fixtures_root):
    from busdx.inference.scan_area import NoDualView, split_dual_view

    capture, left, right = _capture(fixtures_root)
    a, b = split_dual_view(capture)
    np.testing.assert_array_equal(a.crop(capture), left)
    np.testing.assert_array_equal(b.crop(capture), right)
    # one scan is not a dual view: refused, not cut through the tissue
    with pytest.raises(NoDualView, match="two files"):
        split_dual_view(left)
    with pytest.raises(NoDualView):
        split_dual_view(_capture(fixtures_root, gap=0)[0])
    with pytest.raises(NoDualView, match="too narrow"):
        split_dual_view(np.zeros((300, 400), np.float32))


def test_each_pane_reads_as_its_own_image_and_the_lesion_as_both(fixtures_root, models,
                                                                tmp_path):
    import csv

    from PIL import Image

    from busdx.cli.main import main
    from busdx.inference.lesion import read_lesion

    capture, left, right = _capture(fixtures_root)
    panes = [analyze(capture, models, render_overlays=False, pane=p) for p in ("left", "right")]
    for pane, image in zip(panes, (left, right), strict=True):
        alone = analyze(image, models, render_overlays=False)
        assert pane.logit == pytest.approx(alone.logit, abs=1e-6)
        assert (pane.width, pane.height) == (image.shape[1], image.shape[0])
    assert panes[0].to_json(images=False)["image"]["pane"] == {
        "side": "left", "top": 30, "left": 50, "width": left.shape[1], "height": left.shape[0]}
    with pytest.raises(ValueError, match="pane"):
        analyze(capture, models, pane="middle")

    path = tmp_path / "capture.png"
    Image.fromarray((capture * 255).round().astype(np.uint8)).save(path)
    if models.settings.lesion_threshold is None:
        return
    images, lesions = tmp_path / "images.csv", tmp_path / "lesions.csv"
    assert main(["predict", str(path), "--dual-view", "--csv", str(images), "--lesions-csv",
                 str(lesions), "--models", str(models.directory)]) == 0
    with images.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"{path}#left", f"{path}#right"]
    with lesions.open(newline="") as f:
        (lesion,) = list(csv.DictReader(f))
    expected = read_lesion(panes, models.settings.lesion_threshold)
    assert lesion["views"] == "2" and lesion["lesion"] == str(path)
    assert float(lesion["probability"]) == pytest.approx(expected.probability, abs=1e-5)
    # a single scan given as a dual view: an error row per pane, the batch goes on
    single = tmp_path / "single.png"
    Image.fromarray((left * 255).round().astype(np.uint8)).save(single)
    assert main(["predict", str(single), "--dual-view", "--csv", str(images), "--models",
                 str(models.directory)]) == 0
    with images.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all("dual-view" in r["error"] for r in rows)


def test_the_api_analyses_one_pane_and_refuses_a_capture_without_two(fixtures_root, models):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from busdx.api.app import create_app

    capture, left, _ = _capture(fixtures_root)

    def png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray((image * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    with TestClient(create_app(models.directory)) as client:
        answer = client.post("/api/analyze?pane=right",
                             files={"file": ("c.png", png(capture), "image/png")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["image"]["pane"]["side"] == "right"
        refused = client.post("/api/analyze?pane=left",
                              files={"file": ("l.png", png(left), "image/png")})
        assert refused.status_code == 422 and "dual-view" in refused.json()["detail"]
        bad = client.post("/api/analyze?pane=top", files={"file": ("c.png", png(capture),
                                                                    "image/png")})
        assert bad.status_code == 422


# ------------------------------------------------------------ a DICOM's declared regions


def _screen(scans: list[np.ndarray], left: int = 70, top: int = 40) -> tuple[np.ndarray, list]:
    """The scans side by side, touching, on a scanner's screen whose annotations (a settings
    column, a title, a depth scale) stop the black frame rule; 8-bit, with each scan's box."""
    h, w = max(s.shape[0] for s in scans), sum(s.shape[1] for s in scans)
    screen = np.zeros((top + h + 30, left + w + 40), np.uint8)
    boxes, x = [], left
    for s in scans:
        screen[top:top + s.shape[0], x:x + s.shape[1]] = np.round(s * 255).astype(np.uint8)
        boxes.append((x, top, s.shape[1], s.shape[0]))
        x += s.shape[1]
    for i in range(12):  # settings text down the left margin
        screen[top + 8 + 22 * i:top + 18 + 22 * i, 6:50] = 220
    screen[8:20, 10:left + w // 2] = 255  # a title line
    screen[top:top + h, left + w + 6] = 255  # the depth scale's line
    return screen, boxes


def _regions(boxes: list, mm: list[float]) -> list[dict]:
    from stand_in_models import calibration_region

    return [calibration_region(m, w, h, left=x, top=y)
            for (x, y, w, h), m in zip(boxes, mm, strict=True)]


def test_a_dicom_screen_is_analysed_as_its_declared_scan(scan, models):
    """The file's declared region gives the scan exactly, and it is read as the scan alone; the
    same screen as a screenshot is cut by the pixels, past its annotations."""
    from stand_in_models import dicom_bytes

    h, w = scan.shape
    pixels, boxes = _screen([scan])
    screenshot = analyze(pixels, models, render_overlays=False)
    assert (screenshot.scan_area.left, screenshot.scan_area.top) == (70, 40)
    assert screenshot.scan_area_from == "black frame" and screenshot.regions == 0
    plain = analyze(np.round(scan * 255).astype(np.uint8), models, render_overlays=False)
    a = analyze(dicom_bytes(pixels, regions=_regions(boxes, [0.07])), models,
                render_overlays=False)
    assert a.scan_area == ScanArea(40, 40 + h, 70, 70 + w)
    assert (a.scan_area_from, a.regions) == ("ultrasound regions", 1)
    assert a.logit == pytest.approx(plain.logit, abs=1e-5)
    np.testing.assert_array_equal(a.mask[40:40 + h, 70:70 + w], plain.mask)
    assert a.pixel_spacing_mm == pytest.approx((0.07, 0.07))
    if plain.measurements is not None:
        assert a.measurements.units == "mm"
        assert a.measurements.area_px == plain.measurements.area_px
    image = a.to_json(images=False)["image"]
    assert (image["scan_area_from"], image["regions"]) == ("ultrasound regions", 1)
    # studies that analyse the whole image turn the regions off too
    whole = analyze(dicom_bytes(pixels, regions=_regions(boxes, [0.07])), models,
                    render_overlays=False, trim_margins=False)
    assert whole.scan_area is None and whole.scan_area_from is None


def test_a_dicom_dual_view_splits_at_its_regions_even_with_no_gap(fixtures_root, models):
    from busdx.inference.scan_area import NoDualView
    from stand_in_models import dicom_bytes

    _, left, right = _capture(fixtures_root)
    pixels, boxes = _screen([left, right])
    dicom = dicom_bytes(pixels, regions=_regions(boxes, [0.1, 0.05])[::-1])
    for side, image, box, mm in zip(("left", "right"), (left, right), boxes, (0.1, 0.05),
                                    strict=True):
        pane = analyze(dicom, models, render_overlays=False, pane=side)
        alone = analyze(np.round(image * 255).astype(np.uint8), models, render_overlays=False)
        assert pane.pane == (side, ScanArea(box[1], box[1] + box[3], box[0], box[0] + box[2]))
        assert pane.logit == pytest.approx(alone.logit, abs=1e-5)
        assert pane.pixel_spacing_mm == pytest.approx((mm, mm))
        assert pane.scan_area_from == "ultrasound regions" and pane.regions == 2
    # the same screen without its regions has no gap to split at
    with pytest.raises(NoDualView):
        analyze(pixels, models, render_overlays=False, pane="left")
    # read whole, the two regions bound the scan and the answer says there are two
    whole = analyze(dicom, models, render_overlays=False)
    assert whole.scan_area == ScanArea(boxes[0][1], boxes[0][1] + max(b[3] for b in boxes),
                                       boxes[0][0], boxes[1][0] + boxes[1][2])
    assert whole.regions == 2 and whole.pane is None


def test_one_declared_region_holding_both_panes_is_split_at_its_gap(fixtures_root, models):
    from stand_in_models import dicom_bytes

    capture, left, right = _capture(fixtures_root)
    pixels = np.round(capture * 255).astype(np.uint8)
    pixels[5:15, 5:capture.shape[1] - 5] = 255  # a title line the frame rule would stop at
    box = (40, 30, capture.shape[1] - 80, capture.shape[0] - 60)  # some black either side
    dicom = dicom_bytes(pixels, regions=_regions([box], [0.1]))
    for side, image in zip(("left", "right"), (left, right), strict=True):
        pane = analyze(dicom, models, render_overlays=False, pane=side)
        scan = pane.scan_area.crop(pane.image) if pane.scan_area else pane.image
        np.testing.assert_allclose(scan, np.round(image * 255) / 255, atol=1e-6)
        assert pane.pixel_spacing_mm == pytest.approx((0.1, 0.1))


def test_the_api_and_the_csv_say_the_regions_found_the_scan(scan, models, tmp_path, caplog):
    import csv
    import logging

    from fastapi.testclient import TestClient

    from busdx.api.app import create_app
    from busdx.cli.main import main
    from stand_in_models import dicom_bytes

    h, w = scan.shape
    pixels, boxes = _screen([scan, scan])
    data = dicom_bytes(pixels, regions=_regions(boxes, [0.1, 0.1]))
    (tmp_path / "screen.dcm").write_bytes(data)
    with TestClient(create_app(models.directory)) as client:
        whole = client.post("/api/analyze", files={"file": ("s.dcm", data)}).json()
        right = client.post("/api/analyze?pane=right", files={"file": ("s.dcm", data)}).json()
    assert whole["image"]["regions"] == 2 and whole["image"]["pane"] is None
    assert whole["image"]["scan_area_from"] == "ultrasound regions"
    assert right["image"]["pane"] == {"side": "right", "top": 40, "left": 70 + w, "width": w,
                                      "height": h}
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "screen.dcm"), "--dual-view", "--csv", str(out),
                 "--models", str(models.directory)]) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"].rsplit("#", 1)[1] for r in rows] == ["left", "right"]
    assert [r["scan_area_from"] for r in rows] == ["ultrasound regions"] * 2
    assert all(r["error"] == "" and r["pixel_spacing_mm"] == "0.1 0.1" for r in rows)
    # read as one image, the file is flagged: its two scans are probably one lesion's planes
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(tmp_path / "screen.dcm"), "--csv", str(out), "--models",
                     str(models.directory)]) == 0
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["regions"], row["scan_area_from"]) == ("2", "ultrasound regions")
    assert "--dual-view" in caplog.text
