"""Several sites in one table, BrEaST's fixed split, lesion-free windows, and the measures built
on them (external scores on BrEaST, "no lesion" on held-out windows)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from busdx.cli.main import main
from busdx.data.sites import breast_split, load_sites, read_breast, subset
from busdx.data.windows import MIN_SIDE, lesion_free_window
from busdx.errors import BusdxError
from busdx.evaluation.evidence import load_record
from busdx.evaluation.external import read_external
from stand_in_models import build_stand_in_models, load_script

BREAST_FIXTURE = Path(__file__).parent / "fixtures" / "breast-lesions-usg"
# the sorted test-half patients of the complete BrEaST, as first drawn: the split never changes
TEST_PATIENTS_DIGEST = "94f1d65c09e6"


def test_breast_scans_are_read_with_their_site_label_mask_and_split():
    records = read_breast(BREAST_FIXTURE)
    assert [r.id for r in records] == ["case009", "case056", "case173", "case205", "case213"]
    assert {r.site for r in records} == {"breast"}
    assert [r.label for r in records] == [0, 0, 1, 1, None]
    assert all(r.mask_path.is_file() for r in records if r.label is not None)
    assert records[-1].mask_path is None and records[-1].pathology == "normal"
    # half of each class in each part (the odd one out goes to test), one scan per patient
    counts = Counter((r.pathology, r.split) for r in records)
    assert counts == {("benign", "dev"): 1, ("benign", "test"): 1, ("malignant", "dev"): 1,
                      ("malignant", "test"): 1, ("normal", "test"): 1}
    assert read_breast(BREAST_FIXTURE) == records  # no randomness left
    assert {r.id for r in subset(records, "dev")} | {r.id for r in subset(records, "test")} == \
        {r.id for r in records}
    with pytest.raises(BusdxError):
        subset(records, "validation")


def test_sites_share_one_table(fixtures_root):
    records = load_sites(fixtures_root, BREAST_FIXTURE)
    assert Counter(r.site for r in records) == {"busbra": 17, "breast": 5}
    busbra = [r for r in records if r.site == "busbra"]
    assert all(r.split.startswith("fold") and r.patient.startswith("busbra-") for r in busbra)
    with pytest.raises(BusdxError):
        load_sites(None, None)
    with pytest.raises(BusdxError, match="not a BrEaST"):
        read_breast(fixtures_root)


def test_the_breast_split_is_the_one_the_plan_fixed(breast_root):
    """docs/generalisation_plan.md: half of each class, by patient, seed 0, never redrawn."""
    records = read_breast(breast_root)
    counts = Counter((r.pathology, r.split) for r in records)
    assert counts == {("benign", "dev"): 77, ("benign", "test"): 77, ("malignant", "dev"): 49,
                      ("malignant", "test"): 49, ("normal", "dev"): 2, ("normal", "test"): 2}
    test = ",".join(sorted(r.patient for r in records if r.split == "test"))
    assert hashlib.sha256(test.encode()).hexdigest()[:12] == TEST_PATIENTS_DIGEST
    assert breast_split(records) == {r.patient: r.split for r in records}


def test_a_lesion_free_window_keeps_clear_of_the_lesion():
    mask = np.zeros((200, 300), np.uint8)
    mask[20:60, 30:90] = 1  # top left: the largest strip is below the grown box
    window = lesion_free_window(mask)
    assert window is not None and window.top >= 60 + 10 and window.bottom == 200
    assert window.cut(mask).sum() == 0
    assert (window.bottom - window.top) >= MIN_SIDE * 200
    central = np.zeros((200, 300), np.uint8)
    central[40:160, 60:240] = 1  # no strip of 40% of both sides is left
    assert lesion_free_window(central) is None
    assert lesion_free_window(np.zeros((50, 50), np.uint8)) is None


def test_breast_is_an_external_layout_with_subsets(tmp_path):
    stand_in_dir = build_stand_in_models(tmp_path / "models")
    dataset = read_external(BREAST_FIXTURE, subset="test")
    assert [c.image.name for c in dataset.cases] == ["case009.png", "case173.png"]
    assert dataset.skipped == {"normal scans (no lesion)": 1} and dataset.has_patients
    assert {c.birads for c in dataset.cases} <= {2, 3, 4, 5, None}
    with pytest.raises(BusdxError, match="--subset"):
        read_external(tmp_path, subset="test")
    out = tmp_path / "out"
    assert main(["evaluate", "external", "--data", str(BREAST_FIXTURE), "--subset", "all",
                 "--models", str(stand_in_dir), "--out", str(out), "--reps", "20",
                 "--evidence-name", "breast_all"]) == 0
    record = load_record("external.breast_all", stand_in_dir / "evidence")
    assert record.results["n"] == 4 and record.kind == "evaluation"
    assert json.loads((out / "external.json").read_text())["images"] == 4


def test_no_lesion_is_measured_on_windows_and_normal_scans(fixtures_root, tmp_path, capsys):
    stand_in_dir = build_stand_in_models(tmp_path / "models")
    assert main(["evaluate", "no-lesion", "--data", str(fixtures_root), "--breast",
                 str(BREAST_FIXTURE), "--subset", "test", "--models", str(stand_in_dir),
                 "--out", str(tmp_path)]) == 0
    record = load_record("no_lesion.test", stand_in_dir / "evidence")
    breast = record.results["sites"]["breast"]
    assert breast["normal_scans"]["n"] == 1
    assert breast["lesion_images_with_a_lesion_found"]["n"] == 2
    free = breast["lesion_free_reported_no_lesion"]
    assert free["n"] == breast["windows"]["n"] + 1 and 0 <= free["hits"] <= free["n"]
    rows = json.loads((tmp_path / "no_lesion_test_rows.json").read_text())
    assert {r["site"] for r in rows} == {"busbra", "breast"}
    assert "lesion-free images reported 'no lesion'" in capsys.readouterr().out


def test_the_bundled_models_reproduce_their_breast_and_no_lesion_evidence(busbra_root, breast_root,
                                                                          tmp_path):
    """The card's and the README's BrEaST rows and "no lesion" rows, measured again."""
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir
    from tiers import unavailable

    models = real_models_dir()
    if models is None:
        unavailable(REAL_MODELS_MISSING)
    root = Path(__file__).resolve().parent.parent
    recorded = load_record("external.breast_test", root / "evidence")
    assert main(["evaluate", "external", "--data", str(breast_root), "--subset", "test",
                 "--models", str(models), "--out", str(tmp_path / "ext"), "--reps", "2000",
                 "--threads", "2"]) == 0
    now = json.loads((tmp_path / "ext" / "external.json").read_text())
    c = now["classification"]
    for key in ("auc", "sensitivity", "specificity"):
        assert c[key] == pytest.approx(recorded.results[key], abs=1e-9), key
    assert c["auc_ci95"] == pytest.approx(recorded.results["auc_ci95"], abs=1e-9)
    assert now["segmentation"]["dice"]["mean"] == pytest.approx(recorded.results["dice"], abs=1e-9)

    recorded = load_record("no_lesion.test", root / "evidence")
    assert main(["evaluate", "no-lesion", "--data", str(busbra_root), "--breast",
                 str(breast_root), "--subset", "test", "--models", str(models), "--out",
                 str(tmp_path / "nl"), "--no-evidence", "--threads", "2"]) == 0
    rows = json.loads((tmp_path / "nl" / "no_lesion_test_rows.json").read_text())
    for site, s in recorded.results["sites"].items():
        mine = [r for r in rows if r["site"] == site]
        free = sum(1 for r in mine if r.get("window_no_lesion") or r.get("no_lesion"))
        assert free == s["lesion_free_reported_no_lesion"]["hits"], site
        assert sum(1 for r in mine if r.get("lesion_found")) == \
            s["lesion_images_with_a_lesion_found"]["hits"], site


def test_data_check_covers_breast(fixtures_root, tmp_path, capsys):
    assert main(["data", "check", "--data", str(fixtures_root), "--breast",
                 str(BREAST_FIXTURE)]) == 0
    assert "1 test normal" in capsys.readouterr().out
    broken = tmp_path / "breast"
    import shutil

    shutil.copytree(BREAST_FIXTURE, broken)
    (broken / "images_and_masks" / "case173_tumor.png").unlink()
    (broken / "images_and_masks" / "case009.png").write_bytes(b"not a png")
    assert main(["data", "check", "--data", str(fixtures_root), "--breast", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "case009: image case009.png is unreadable" in out
    assert "case173: mask case173_tumor.png is unreadable" in out


def test_data_preview_draws_the_second_site_too(fixtures_root, tmp_path):
    from PIL import Image

    from busdx.cli.main import main

    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--data", str(fixtures_root), "--breast",
                 str(BREAST_FIXTURE), "--out", str(out), "--images", "4"]) == 0
    for path in (out, tmp_path / "preview-breast.png"):
        with Image.open(path) as figure:
            assert figure.width > 500 and figure.height > 300


def test_generalisation_results_page_is_the_rendering_of_its_records():
    """docs/generalisation_results.md is written by tools/site_recipes.py from committed
    records; a fresh clone (no runs) renders exactly the page that is committed."""
    root = Path(__file__).resolve().parent.parent
    site_recipes = load_script(root / "tools" / "site_recipes.py")
    text, _, pairs = site_recipes.render(list(site_recipes.CANDIDATES), recorded_only=True)
    assert text == (root / "docs" / "generalisation_results.md").read_text(encoding="utf-8")
    assert "pair_windows" in pairs and "An outline network that learnt lesion-free tissue" in text
