"""``busdx predict``: the CSV contract, masks, overlays, and a batch that survives bad files."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from busdx.cli.main import main
from busdx.inference.batch import COLUMNS
from stand_in_models import (
    REAL_MODELS_MISSING,
    build_stand_in_models,
    calibration_region,
    dicom_bytes,
    encode,
    real_models_dir,
    synthetic_image,
)
from tiers import unavailable

REQUIRED = ("path", "probability", "label", "risk_band", "error")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return build_stand_in_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def use_stand_in(stand_in, monkeypatch):
    monkeypatch.setenv("BUSDX_MODELS", str(stand_in))
    return stand_in


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _folder(tmp_path, fixtures_root):
    """Good images (nested, several formats, extensionless DICOM) and bad ones."""
    root = tmp_path / "in"
    (root / "nested" / "deeper").mkdir(parents=True)
    images = sorted((fixtures_root / "Images").glob("*.png"))[:2]
    for image in images:
        shutil.copy(image, root / image.name)
    gray = synthetic_image(150, 200)
    (root / "nested" / "scan.jpg").write_bytes(encode(gray, "JPEG"))
    (root / "nested" / "deeper" / "scan16.tif").write_bytes(
        encode(gray.astype(np.uint16) * 257, "TIFF")
    )
    (root / "nested" / "IM0001").write_bytes(  # DICOM without a suffix, as PACS exports them
        dicom_bytes(gray, regions=[calibration_region(0.1, 200, 150)])
    )
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "empty.bmp").write_bytes(b"")
    (root / "notes.txt").write_text("not an image: skipped inside a folder")
    return root, images


def test_folder_batch(tmp_path, fixtures_root, use_stand_in, capsys):
    root, images = _folder(tmp_path, fixtures_root)
    out, masks, overlays = tmp_path / "out.csv", tmp_path / "masks", tmp_path / "overlays"
    code = main(["predict", str(root), "--csv", str(out), "--masks-dir", str(masks),
                 "--overlays-dir", str(overlays)])
    assert code == 0
    rows = _read(out)
    assert list(rows[0]) == list(COLUMNS)
    assert all(col in rows[0] for col in REQUIRED)
    by_name = {row["path"].replace("\\", "/").rsplit("/", 1)[-1]: row for row in rows}
    assert set(by_name) == {
        images[0].name, images[1].name, "scan.jpg", "scan16.tif", "IM0001", "broken.png",
        "empty.bmp",
    }  # notes.txt skipped
    assert "truncated or damaged" in by_name["broken.png"]["error"]
    assert "empty" in by_name["empty.bmp"]["error"]
    for name in (images[0].name, images[1].name, "scan.jpg", "scan16.tif", "IM0001"):
        row = by_name[name]
        assert row["error"] == ""
        p = float(row["probability"])
        assert 0.0 <= p <= 1.0
        assert row["label"] == ("malignant" if p >= float(row["threshold"]) else "benign")
        assert row["risk_band"] in {"3", "4A", "4B", "4C", "5"}
    assert by_name["IM0001"]["units"] == "mm"
    assert by_name["IM0001"]["pixel_spacing_mm"] == "0.1 0.1"
    assert by_name[images[0].name]["units"] == "px"
    assert float(by_name[images[0].name]["area"]) > 0
    for image in images:
        mask = np.asarray(Image.open(masks / f"{image.stem}.png"))
        original = Image.open(image)
        assert mask.shape == (original.height, original.width)
        assert set(np.unique(mask)) <= {0, 255}
        assert (overlays / f"{image.stem}_overlay.png").is_file()
        assert (overlays / f"{image.stem}_heatmap.png").is_file()
    assert (masks / "IM0001.png").is_file()
    assert not (masks / "broken.png").exists()
    assert "predict" in capsys.readouterr().err  # the progress bar is on stderr


def test_explicit_files_are_always_tried(tmp_path, use_stand_in):
    odd = tmp_path / "image.data"
    odd.write_bytes(encode(synthetic_image(), "PNG"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out.csv"
    assert main(["predict", str(odd), str(text), str(missing), "--csv", str(out)]) == 0
    rows = {row["path"]: row for row in _read(out)}
    assert rows[str(odd)]["error"] == "" and rows[str(odd)]["probability"]
    assert "not a supported image" in rows[str(text)]["error"]
    assert "cannot read" in rows[str(missing)]["error"]


def test_usage_errors_exit_2(tmp_path, use_stand_in, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--csv", str(tmp_path / "o.csv")]) == 2
    assert "no image files" in caplog.text
    image = tmp_path / "a.png"
    image.write_bytes(encode(synthetic_image(), "PNG"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["predict", str(image), "--csv", str(blocker / "o.csv")]) == 2
    assert "cannot write" in caplog.text


def test_missing_models_exit_2(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BUSDX_MODELS", str(tmp_path / "nowhere"))
    image = tmp_path / "a.png"
    image.write_bytes(encode(synthetic_image(), "PNG"))
    assert main(["predict", str(image), "--csv", str(tmp_path / "o.csv")]) == 2
    assert "no release.json" in caplog.text


def test_same_stem_in_two_folders_keeps_both_masks(tmp_path, use_stand_in):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "scan.png").write_bytes(encode(synthetic_image(seed=len(sub)), "PNG"))
    masks = tmp_path / "masks"
    main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--csv", str(tmp_path / "o.csv"),
          "--masks-dir", str(masks)])
    assert sorted(p.name for p in masks.iterdir()) == ["scan-2.png", "scan.png"]


def test_real_models_on_fixtures(tmp_path, fixtures_root, monkeypatch):
    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    monkeypatch.setenv("BUSDX_MODELS", str(directory))
    images = sorted((fixtures_root / "Images").glob("*.png"))[:4]
    out, masks = tmp_path / "out.csv", tmp_path / "masks"
    assert main(["predict", *map(str, images), "--csv", str(out), "--masks-dir", str(masks)]) == 0
    rows = _read(out)
    assert len(rows) == len(images) and all(row["error"] == "" for row in rows)
    assert all(row["label"] in ("benign", "malignant", "no lesion") for row in rows)
    for image in images:
        mask = np.asarray(Image.open(masks / f"{image.stem}.png"))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]


def test_real_models_withhold_the_call_on_a_chart_in_the_csv(tmp_path, monkeypatch, caplog):
    """A chart in a folder of scans gets no call in the CSV, where nothing else on its row would
    warn a reader sorting by label: 'call withheld', no band, the note says why, and the
    summary counts it."""
    from pathlib import Path

    directory = real_models_dir()
    if directory is None:
        unavailable(REAL_MODELS_MISSING)
    monkeypatch.setenv("BUSDX_MODELS", str(directory))
    chart = Path(__file__).parent / "fixtures" / "not-ultrasound" / "drawn_bar_chart.png"
    out = tmp_path / "out.csv"
    with caplog.at_level("WARNING"):
        assert main(["predict", str(chart), "--csv", str(out)]) == 0
    (row,) = _read(out)
    if row["lesion_found"] != "true":
        pytest.skip("the bundled segmenter outlines nothing on the chart: no call to withhold")
    assert row["label"] == "call withheld" and row["risk_band"] == "" and row["risk_text"] == ""
    assert row["note"].startswith("Call withheld: this may not be a breast ultrasound")
    assert "1 image(s) may not be breast ultrasound at all and got no call" in caplog.text
