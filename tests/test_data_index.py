from pathlib import Path

import pytest

from busdx.data.index import DatasetError, load_index, resolve_root


def test_fixture_index_reads_every_field(fixtures_root):
    index = load_index(fixtures_root)
    assert len(index) == 17
    assert len(index.patients) == 10
    r = index.by_id()["bus_0009-l"]
    assert (r.patient, r.pathology, r.label, r.side) == ("9", "malignant", 1, "left")
    assert r.scanner.startswith("GE Logiq 7")
    assert r.image_path.is_file() and r.mask_path.is_file()
    assert r.mask_path.name == "mask_0009-l.png"
    assert len(r.bbox) == 4 and r.fold == 1
    assert {x.scanner.split()[0] for x in index} >= {"GE", "Toshiba", "U-Systems"}


def test_windows_line_endings_are_read_the_same(fixtures_root, tmp_path):
    root = _copy_root(fixtures_root, tmp_path)
    for name in ("bus_data.csv", "5-fold-cv.csv"):
        text = (root / name).read_text()
        (root / name).write_bytes(text.replace("\n", "\r\n").encode())
    def fields(index):
        return [(r.id, r.patient, r.pathology, r.birads, r.height, r.bbox, r.fold) for r in index]

    assert fields(load_index(root)) == fields(load_index(fixtures_root))


def test_root_from_environment(fixtures_root, monkeypatch):
    monkeypatch.setenv("BUSDX_DATA", str(fixtures_root))
    assert resolve_root(None) == fixtures_root


def test_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSDX_DATA", raising=False)
    with pytest.raises(DatasetError, match="--data"):
        resolve_root(None)
    with pytest.raises(DatasetError, match="bus_data.csv"):
        resolve_root(tmp_path)


def test_bad_pathology_names_the_line(fixtures_root, tmp_path):
    root = _copy_root(fixtures_root, tmp_path)
    csv = root / "bus_data.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace("benign", "unknown").replace("malignant", "unknown")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 4"):
        load_index(root)


@pytest.mark.full_data
def test_full_dataset_counts(busbra_root):
    index = load_index(busbra_root)
    assert len(index) == 1875
    assert len(index.patients) == 1064
    assert sum(r.label for r in index) == 607
    assert sorted({r.fold for r in index}) == [1, 2, 3, 4, 5]


def _copy_root(src: Path, dst: Path) -> Path:
    import shutil

    root = dst / "busbra"
    shutil.copytree(src, root)
    return root
