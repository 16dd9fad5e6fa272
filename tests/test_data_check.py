import json
import shutil

import numpy as np
import pytest
from PIL import Image

from busdx.cli.main import main
from busdx.data.check import check_dataset, format_report


@pytest.fixture
def copy_root(fixtures_root, tmp_path):
    root = tmp_path / "busbra"
    shutil.copytree(fixtures_root, root)
    return root


def test_fixtures_are_clean(fixtures_root):
    report = check_dataset(fixtures_root, progress=False)
    assert report.ok, report.errors
    assert (report.images, report.patients) == (17, 10)
    assert report.pathology == {"benign": 9, "malignant": 8}
    assert set(report.splits) == {"train", "val", "test"}
    assert sum(s.images for s in report.splits.values()) == 17


def test_missing_mask_is_an_error(copy_root):
    (copy_root / "Masks" / "mask_0007-l.png").unlink()
    report = check_dataset(copy_root, progress=False)
    assert not report.ok
    assert any("bus_0007-l" in e and "mask" in e and "missing" in e for e in report.errors)


def test_truncated_png_is_an_error(copy_root):
    path = copy_root / "Images" / "bus_0358-r.png"
    path.write_bytes(path.read_bytes()[:2000])
    report = check_dataset(copy_root, progress=False)
    assert any("bus_0358-r" in e and "unreadable" in e for e in report.errors)


def test_csv_row_without_its_image_is_an_error(copy_root):
    (copy_root / "Images" / "bus_0854-s.png").unlink()
    report = check_dataset(copy_root, progress=False)
    assert any("bus_0854-s" in e and "image file" in e for e in report.errors)


def test_empty_mask_and_size_mismatch_are_errors(copy_root):
    mask_path = copy_root / "Masks" / "mask_0361-l.png"
    with Image.open(mask_path) as m:
        size = m.size
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(mask_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(copy_root / "Masks" / "mask_0361-r.png")
    report = check_dataset(copy_root, progress=False)
    assert any("bus_0361-l" in e and "empty" in e for e in report.errors)
    assert any("bus_0361-r" in e and "10x10" in e for e in report.errors)


def test_csv_size_disagreement_and_unlisted_files_are_warnings(copy_root):
    csv = copy_root / "bus_data.csv"
    lines = csv.read_text().splitlines()
    parts = lines[1].split(",")
    parts[7] = str(int(parts[7]) + 5)  # Height
    lines[1] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")
    shutil.copy(copy_root / "Images" / "bus_0007-l.png", copy_root / "Images" / "bus_9999-l.png")
    report = check_dataset(copy_root, progress=False)
    assert report.ok
    assert any("the file is used" in w for w in report.warnings)
    assert any("bus_9999-l.png" in w for w in report.warnings)


def test_cli_exit_codes_and_output(fixtures_root, copy_root, capsys):
    assert main(["data", "check", "--data", str(fixtures_root)]) == 0
    out = capsys.readouterr().out
    assert "images: 17" in out and "OK" in out
    (copy_root / "Masks" / "mask_0007-r.png").unlink()
    assert main(["data", "check", "--data", str(copy_root), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["errors"] and payload["images"] == 17


def test_cli_missing_root_is_a_clear_message(tmp_path, capsys, caplog):
    assert main(["data", "check", "--data", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in caplog.text


def test_preview_figure(fixtures_root, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--data", str(fixtures_root), "--out", str(out),
                 "--images", "6"]) == 0
    with Image.open(out) as img:
        assert img.size[0] > 800 and img.size[1] > 400


@pytest.mark.full_data
def test_full_dataset_report(busbra_root):
    report = check_dataset(busbra_root, progress=False)
    assert report.ok, report.errors
    assert (report.images, report.patients) == (1875, 1064)
    assert report.pathology == {"benign": 1268, "malignant": 607}
    height_warnings = sorted(w.split(":")[0] for w in report.warnings if "the file is used" in w)
    assert height_warnings == ["bus_0856-l", "bus_0857-r", "bus_0912-l", "bus_0990-l"]
    assert len(report.warnings) == 4
    assert report.splits["test"].images == 383
    assert "FAILED" not in format_report(report)
