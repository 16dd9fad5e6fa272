"""External validation: both layouts, the errors a user meets, and agreement with the test-fold
evaluation when the "external" images are the test fold itself."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busdx.cli.main import main
from busdx.data.index import load_index
from busdx.errors import BusdxError
from busdx.evaluation.external import ExternalDataError, evaluate_external, read_external
from stand_in_models import build_stand_in_models, real_models_dir
from tiers import threads


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return real_models_dir() or build_stand_in_models(tmp_path_factory.mktemp("models"))


def _busi_layout(fixtures_root: Path, root: Path) -> list:
    """The fixtures as BUSI ships its images: class folders, masks beside them (one lesion
    outline split over two mask files), a normal/ image, one damaged file and a hidden one."""
    records = load_index(fixtures_root).records
    for r in records:
        folder = root / r.pathology
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.image_path, folder / f"{r.id}.png")
        shutil.copy(r.mask_path, folder / f"{r.id}_mask.png")
    first = records[0]
    mask = np.asarray(Image.open(first.mask_path).convert("L")) > 0
    top = np.zeros_like(mask)
    top[: mask.shape[0] // 2] = mask[: mask.shape[0] // 2]
    Image.fromarray(((mask & ~top) * 255).astype(np.uint8)).save(
        root / first.pathology / f"{first.id}_mask.png")
    Image.fromarray((top * 255).astype(np.uint8)).save(
        root / first.pathology / f"{first.id}_mask_1.png")
    (root / "normal").mkdir()
    shutil.copy(records[1].image_path, root / "normal" / "normal (1).png")
    (root / "malignant" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    # a macOS companion file, as a copy from a Mac leaves them: not an image, not a failure
    (root / "benign" / f"._{records[0].id}.png").write_bytes(b"\0\5\26\7")
    return records


def test_class_folders_end_to_end(fixtures_root, models_dir, tmp_path):
    records = _busi_layout(fixtures_root, tmp_path / "busi")
    out = tmp_path / "out"
    rc = main(["evaluate", "external", "--data", str(tmp_path / "busi"), "--out", str(out),
               "--models", str(models_dir), "--reps", "50"])
    assert rc == 0
    report = json.loads((out / "external.json").read_text())
    assert report["layout"].startswith("class folders")
    assert report["images"] == len(records) + 1  # the damaged file is listed ...
    assert report["analysed"] == len(records) and report["failed"] == 1  # ... and set aside
    assert report["skipped"] == {"normal (no lesion)": 1}
    assert report["classes"]["malignant"] == sum(r.label for r in records)
    c = report["classification"]
    assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == len(records)
    assert c["birads"] is None  # no BI-RADS in class folders
    assert "readers" not in c and "per_birads" not in c
    assert report["bootstrap_unit"].startswith("image")
    assert report["segmentation"]["n"] == len(records)
    with (out / "external_images.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) + 1
    damaged = [r for r in rows if r["image"].endswith("damaged.png")]
    assert damaged[0]["error"] and not damaged[0]["probability"]
    # the two mask files of the first image are merged: its Dice is that of the whole outline
    first = next(r for r in rows if r["image"].endswith(f"{records[0].id}.png"))
    assert 0.0 <= float(first["dice"]) <= 1.0
    assert {Path(p).name for p in report["figures"]} == {
        "classifier_roc.png", "classifier_confusion.png", "classifier_reliability.png"}
    check = report["input_check"]
    from busdx.release import load_release

    if not load_release(models_dir).input_check.ranges:
        assert check is None
    else:  # every analysed image was checked; the warned ones are counted apart
        assert check["calls_when_unusual"]["n"] + check["calls_otherwise"]["n"] == len(records)
        assert check["unusual"] == sum(1 for r in rows if r["input_unusual"])


def test_the_input_check_summary_counts_calls_with_and_without_a_warning():
    from busdx.evaluation.external import _input_check_summary

    rows = [{"truth": "benign", "call": "benign", "input_unusual": ""},
            {"truth": "malignant", "call": "benign", "input_unusual": "texture low"},
            {"truth": "malignant", "call": "malignant", "input_unusual": "texture low; contrast high"},
            {"truth": "benign", "error": "unreadable"}]
    out = _input_check_summary(rows, 0.3)
    assert out["unusual"] == 2 and out["fraction_unusual"] == pytest.approx(2 / 3)
    assert out["by_statistic"]["texture low"] == 2 and out["by_statistic"]["contrast high"] == 1
    assert out["calls_when_unusual"] == {"n": 2, "calls_right": 1, "accuracy": 0.5}
    assert out["calls_otherwise"] == {"n": 1, "calls_right": 1, "accuracy": 1.0}
    assert _input_check_summary([{"truth": "benign", "call": "benign"}], 0.3) is None
    # a withheld call is judged as the networks' call at the threshold
    withheld = {"call": "call withheld", "input_unusual": "appearance high"}
    out = _input_check_summary([{**withheld, "truth": "malignant", "probability": 0.4},
                                {**withheld, "truth": "benign", "probability": 0.4}], 0.3)
    assert out["calls_when_unusual"] == {"n": 2, "calls_right": 1, "accuracy": 0.5}


def test_merged_masks_score_like_the_single_mask(fixtures_root, models_dir, tmp_path):
    from busdx.inference.models import Models

    records = _busi_layout(fixtures_root, tmp_path / "busi")
    split = read_external(tmp_path / "busi")
    first = next(c for c in split.cases if c.image.stem == records[0].id)
    assert [p.name for p in first.masks] == [f"{records[0].id}_mask.png",
                                             f"{records[0].id}_mask_1.png"]
    other = next(r for r in records if r.label != records[0].label)  # both classes are needed
    single = _labels_csv([records[0], other], tmp_path / "single.csv")
    models = Models.load(models_dir, threads=1)
    merged = evaluate_external(split, models, reps=10, progress=False)
    original = evaluate_external(read_external(tmp_path, single), models, reps=10, progress=False)

    def dice_of(result) -> float:
        return next(r["dice"] for r in result.rows if Path(r["image"]).stem == records[0].id)

    assert dice_of(merged) == pytest.approx(dice_of(original))


def test_a_mask_of_the_wrong_size_costs_its_dice_not_its_classification(
        fixtures_root, models_dir, tmp_path):
    from busdx.inference.models import Models

    records = _busi_layout(fixtures_root, tmp_path / "busi")
    victim = records[2]
    Image.new("L", (17, 11), 255).save(tmp_path / "busi" / victim.pathology / f"{victim.id}_mask.png")
    result = evaluate_external(read_external(tmp_path / "busi"), Models.load(models_dir, threads=1),
                               reps=10, progress=False)
    assert len(result.predictions) == len(records)  # still classified ...
    assert result.segmentation["n"] == len(records) - 1  # ... but out of Dice
    assert result.mask_failed == 1 and result.to_dict()["masks_unusable"] == 1
    row = next(r for r in result.rows if Path(r["image"]).stem == victim.id)
    assert "17x11" in row["mask_error"] and "dice" not in row and row["probability"] >= 0


def _labels_csv(records, path: Path, birads: bool = True, lesion: bool = False) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "mask", "patient"] + (["birads"] if birads else [])
                   + (["lesion"] if lesion else []))
        for r in records:
            # BUS-BRA's Case is one lesion: its -l and -r images are two planes of it
            w.writerow([r.image_path, r.pathology, r.mask_path, r.patient]
                       + ([r.birads] if birads else []) + ([r.patient] if lesion else []))
    return path


def test_labels_csv_matches_the_test_fold_evaluation(fixtures_root, models_dir, tmp_path):
    """The same images through `evaluate external` and through `evaluate classification`'s
    code give the same numbers: one product, one set of metrics."""
    from busdx.evaluation.classification import evaluate_predictions, predict_records
    from busdx.evaluation.model_card import load_card
    from busdx.inference.models import Models

    records = load_index(fixtures_root).records
    dataset = read_external(tmp_path, _labels_csv(records, tmp_path / "labels.csv"))
    assert dataset.has_patients and dataset.layout.startswith("labels CSV")
    models = Models.load(models_dir, threads=1)
    offset = load_card(models_dir)["classifier"].get("logit_offset", 0.0)
    ours = evaluate_external(dataset, models, logit_offset=offset, reps=100, progress=False)
    preds, empty = predict_records(records, models_dir, "predicted", threads=1)
    theirs = evaluate_predictions(preds, models.settings.temperature, models.settings.threshold,
                                  "predicted", empty, reps=100, logit_offset=offset)
    a, b = ours.classification.to_dict(), theirs.to_dict()
    for key in ("auc", "auc_ci95", "tp", "fp", "tn", "fn", "sensitivity_ci95", "ece_calibrated",
                "ece_uncalibrated", "empty_masks"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["birads"]["spearman"] == pytest.approx(b["birads"]["spearman"])
    # with a BI-RADS per image, the model beside the site's reading, as on the test fold
    from busdx.evaluation.classification import birads_sections

    site = ours.to_dict()["classification"]
    fold = birads_sections(preds, models.settings.threshold, reps=100)
    assert site["readers"]["difference"] == pytest.approx(fold["readers"]["difference"])
    assert site["per_birads"] == fold["per_birads"]


@pytest.mark.parametrize("content, message", [
    ("path,label\na.png,benign\n", "needs the columns 'image' and 'label'"),
    ("image,label\na.png,benign\nb.png,maybe\n", "line 3: label 'maybe'"),
    ("image,label\na.png,benign\nb.png,0\n", "2 benign and 0 malignant"),
    ("image,label,birads\na.png,benign,7\nb.png,1,4\n", "line 2: BI-RADS '7'"),
    ("image,label,frame\na.dcm,benign,\nb.dcm,1,0\n", "line 3: frame must be"),
])
def test_labels_csv_errors_name_the_problem(tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(ExternalDataError, match=message.replace("(", r"\(")):
        read_external(tmp_path)


def test_a_folder_of_neither_layout_is_refused_with_a_way_out(tmp_path):
    (tmp_path / "scans").mkdir()
    with pytest.raises(ExternalDataError, match="--labels CSV"):
        read_external(tmp_path)
    rc = main(["evaluate", "external", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()


@pytest.mark.full_data
def test_the_test_fold_as_external_images_reproduces_the_card(busbra_root, tmp_path):
    """Fold 5 given as someone else's labelled folder: the card's end-to-end numbers again."""
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.model_card import load_card
    from busdx.inference.models import Models

    models_dir = Path(__file__).resolve().parent.parent / "models"
    card = load_card(models_dir)
    recorded = card.get("classifier", {}).get("test")
    if recorded is None or recorded.get("masks") != "predicted":
        pytest.skip("no end-to-end test section in the bundled card")
    test = make_split(load_index(busbra_root), SplitConfig(test_fold=5)).test
    dataset = read_external(tmp_path, _labels_csv(test, tmp_path / "labels.csv", lesion=True))
    result = evaluate_external(dataset, Models.load(models_dir, threads=threads()),
                               logit_offset=card["classifier"].get("logit_offset", 0.0),
                               reps=50, progress=False)
    got = result.classification.to_dict()
    assert got["auc"] == pytest.approx(recorded["auc"], abs=1e-6)
    assert [got[k] for k in ("tp", "fp", "tn", "fn")] == [recorded[k] for k in ("tp", "fp", "tn",
                                                                               "fn")]
    served = card["segmenter"]["test"]["postprocessed"]["dice"]["mean"]
    assert result.segmentation["dice"]["mean"] == pytest.approx(served, abs=1e-6)
    # and, given each image's lesion, the card's lesion reading on the test fold
    lesion_card = card["classifier"].get("lesion_reading", {}).get("test")
    if lesion_card is not None:
        for unit in ("image", "lesion"):
            got, recorded = result.lesion_reading[unit], lesion_card[unit]
            assert got["auc"] == pytest.approx(recorded["auc"], abs=1e-6), unit
            assert [got[k] for k in ("n", "tp", "fp", "tn", "fn")] == [
                recorded[k] for k in ("n", "tp", "fp", "tn", "fn")], unit


# ------------------------------------------------------------- the lesion reading on a site's set


def test_a_lesion_pattern_scores_the_lesion_reading_as_on_the_test_fold(fixtures_root, tmp_path):
    """Views grouped by --lesion-pattern give rule X's lesion reading, per image and per lesion,
    with the same numbers as the test-fold evaluation's code on the same predictions."""
    from busdx.evaluation.classification import evaluate_lesion_reading, lesion_predictions
    from busdx.inference.models import Models

    models_dir = build_stand_in_models(tmp_path / "models", _card_with_lesion_reading(0.45))
    records = _busi_layout(fixtures_root, tmp_path / "busi")
    out = tmp_path / "out"
    rc = main(["evaluate", "external", "--data", str(tmp_path / "busi"), "--out", str(out),
               "--models", str(models_dir), "--reps", "50",
               "--lesion-pattern", r"(bus_\d+)-[lr]"])
    assert rc == 0
    report = json.loads((out / "external.json").read_text())
    lesion = report["lesion_reading"]
    assert lesion["threshold"] == 0.45 and "pattern" in report["lesions_from"]
    pairs = {r.patient for r in records if r.side != "single"}
    singles = [r for r in records if r.side == "single"]
    assert lesion["multi_view_lesions"] == len(pairs)
    assert lesion["image"]["n"] == len(records)
    assert lesion["lesion"]["n"] == len(pairs) + len(singles)
    # without patient ids the lesion, not the image, is what the bootstrap resamples
    assert report["bootstrap_unit"].startswith("lesion")

    with (out / "external_images.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    by_lesion: dict[str, set[str]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion"] or r["image"], set()).add(r["lesion_probability"])
        assert r["lesion_call"] == ("malignant" if float(r["lesion_probability"]) >= 0.45
                                    else "benign")
    assert all(len(p) == 1 for p in by_lesion.values())  # one reading per lesion
    assert {r["lesion"] for r in rows if r["lesion"]} == {f"bus_{int(c):04d}" for c in pairs}

    # the same predictions through the test fold's code
    from busdx.evaluation.external import read_external

    dataset = read_external(tmp_path / "busi", lesion_pattern=r"(bus_\d+)-[lr]")
    models = Models.load(models_dir, threads=1)
    result = evaluate_external(dataset, models, reps=50, progress=False)
    keys = [k for k, c in zip(dataset.lesion_keys(), dataset.cases, strict=True)
            if c.image.name != "damaged.png"]
    theirs = evaluate_lesion_reading(result.predictions, keys, models.settings.temperature, 0.45,
                                     masks="predicted", reps=50,
                                     empty_masks=result.classification.empty_masks)
    for unit in ("image", "lesion"):
        for key in ("n", "auc", "tp", "fp", "tn", "fn", "auc_ci95"):
            assert lesion[unit][key] == pytest.approx(theirs[unit][key]), (unit, key)
    images, _ = lesion_predictions(result.predictions, keys, models.settings.temperature)
    assert sorted(round(p.prob, 6) for p in images) == sorted(
        float(r["lesion_probability"]) for r in rows)


def _card_with_lesion_reading(threshold: float) -> dict:
    from stand_in_models import STAND_IN_CARD

    card = json.loads(json.dumps(STAND_IN_CARD))
    card["classifier"]["lesion_reading"] = {"threshold": threshold, "offered": True}
    return card


def test_a_lesion_column_groups_views_and_bad_groupings_are_refused(fixtures_root, tmp_path):
    records = load_index(fixtures_root).records
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "lesion"])
        for r in records:
            w.writerow([r.image_path, r.pathology, r.patient if r.side != "single" else ""])
    dataset = read_external(tmp_path, path)
    assert dataset.lesions_from == "the 'lesion' column" and not dataset.has_patients
    keys = dataset.lesion_keys()
    assert len(set(keys)) == len({r.patient for r in records})
    # no patient column: a lesion's views share a bootstrap unit
    assert [c.patient for c in dataset.cases] == [r.patient if r.side != "single"
                                                  else str(r.image_path) for r in records]
    with pytest.raises(ExternalDataError, match="use one of them"):
        read_external(tmp_path, path, lesion_pattern=r"(bus_\d+)")
    # a pattern that joins a benign and a malignant lesion is caught before anything runs
    _busi_layout(fixtures_root, tmp_path / "busi")
    with pytest.raises(ExternalDataError, match="groups benign and malignant"):
        read_external(tmp_path / "busi", lesion_pattern=r"(bus)_")
    with pytest.raises(BusdxError, match="needs a group"):
        read_external(tmp_path / "busi", lesion_pattern=r"bus_\d+")


def test_a_lesion_pattern_needs_models_with_a_lesion_reading(fixtures_root, tmp_path):
    _busi_layout(fixtures_root, tmp_path / "busi")
    plain = build_stand_in_models(tmp_path / "plain")
    rc = main(["evaluate", "external", "--data", str(tmp_path / "busi"), "--out",
               str(tmp_path / "o"), "--models", str(plain), "--lesion-pattern", r"(bus_\d+)-[lr]"])
    assert rc == 2 and not (tmp_path / "o").exists()


def test_a_framed_capture_is_cut_and_counted(fixtures_root, models_dir, tmp_path):
    records = load_index(fixtures_root).records[:4]
    gray = np.asarray(Image.open(records[0].image_path).convert("L"))
    framed = np.zeros((gray.shape[0] + 40, gray.shape[1] + 100), np.uint8)
    framed[20:20 + gray.shape[0], 50:50 + gray.shape[1]] = gray
    Image.fromarray(framed).save(tmp_path / "framed.png")
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerow(["framed.png", records[0].pathology])
        for r in records[1:]:
            w.writerow([r.image_path, r.pathology])
    out = tmp_path / "out"
    assert main(["evaluate", "external", "--data", str(tmp_path), "--out", str(out),
                 "--models", str(models_dir), "--reps", "20"]) == 0
    assert json.loads((out / "external.json").read_text())["framed"] == 1
    with (out / "external_images.csv").open(newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert rows["framed.png"]["scan_area"] == f"50 20 {gray.shape[1]} {gray.shape[0]}"
    assert sum(bool(r["scan_area"]) for r in rows.values()) == 1


def test_dual_view_captures_score_as_their_halves_read_as_lesions(fixtures_root, models_dir,
                                                                  tmp_path):
    """Captures made of BUS-BRA's halves (masks too), evaluated with --dual-view, give the
    numbers of the halves themselves grouped by a lesion column: per pane, per lesion, Dice."""
    records = {r.id: r for r in load_index(fixtures_root).records}
    cases = ("bus_0007", "bus_0009", "bus_0358", "bus_0360")
    captures, halves = tmp_path / "captures", tmp_path / "halves"
    captures.mkdir()
    halves.mkdir()
    with (captures / "labels.csv").open("w", newline="") as f1, \
            (halves / "labels.csv").open("w", newline="") as f2:
        a, b = csv.writer(f1), csv.writer(f2)
        a.writerow(["image", "label", "mask"])
        b.writerow(["image", "label", "mask", "lesion"])
        for case in cases:
            left, right = records[f"{case}-l"], records[f"{case}-r"]
            for name, attr in (("capture", "image_path"), ("mask", "mask_path")):
                parts = [np.asarray(Image.open(getattr(r, attr)).convert("L")) for r in (left,
                                                                                        right)]
                h = max(p.shape[0] for p in parts)
                out = np.zeros((h + 40, parts[0].shape[1] + parts[1].shape[1] + 56), np.uint8)
                out[20:20 + parts[0].shape[0], 20:20 + parts[0].shape[1]] = parts[0]
                x = 36 + parts[0].shape[1]
                out[20:20 + parts[1].shape[0], x:x + parts[1].shape[1]] = parts[1]
                Image.fromarray(out).save(captures / f"{case}_{name}.png")
            a.writerow([f"{case}_capture.png", left.pathology, f"{case}_mask.png"])
            for r in (left, right):
                b.writerow([r.image_path, r.pathology, r.mask_path, case])
    runs = {}
    for name, folder, extra in (("captures", captures, ["--dual-view"]), ("halves", halves, [])):
        out = tmp_path / f"out_{name}"
        assert main(["evaluate", "external", "--data", str(folder), "--out", str(out),
                     "--models", str(models_dir), "--reps", "50", *extra]) == 0
        runs[name] = json.loads((out / "external.json").read_text())
    c, h = runs["captures"], runs["halves"]
    assert c["dual_view"] and c["images"] == len(cases) and c["analysed"] == 2 * len(cases)
    for key in ("auc", "tp", "fp", "tn", "fn"):
        assert c["classification"][key] == pytest.approx(h["classification"][key]), key
    assert c["segmentation"]["dice"]["mean"] == pytest.approx(h["segmentation"]["dice"]["mean"])
    if h["lesion_reading"] and "skipped" not in h["lesion_reading"]:
        for unit in ("image", "lesion"):
            for key in ("n", "auc", "tp", "fp", "tn", "fn"):
                assert c["lesion_reading"][unit][key] == pytest.approx(
                    h["lesion_reading"][unit][key]), (unit, key)
    with (tmp_path / "out_captures" / "external_images.csv").open(newline="") as f:
        names = [r["image"] for r in csv.DictReader(f)]
    assert names[:2] == ["bus_0007_capture.png#left", "bus_0007_capture.png#right"]


def test_a_cine_loop_is_scored_at_its_labelled_frame(fixtures_root, models_dir, tmp_path):
    """The frame column says which frame of a loop the label and the mask belong to; the frame
    scored is that frame, not the first, and a frame the loop lacks is an error row."""
    from stand_in_models import dicom_bytes

    records = load_index(fixtures_root).records[:4]
    gray = np.asarray(Image.open(records[0].image_path).convert("L"))
    loop = np.stack([np.full_like(gray, 2), gray[::-1], gray])  # the lesion is in frame 3
    (tmp_path / "loop.dcm").write_bytes(dicom_bytes(loop))
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "mask", "frame"])
        w.writerow(["loop.dcm", records[0].pathology, records[0].mask_path, "last"])
        w.writerow(["loop.dcm", records[0].pathology, "", "7"])
        for r in records:
            w.writerow([r.image_path, r.pathology, r.mask_path, ""])
    out = tmp_path / "out"
    assert main(["evaluate", "external", "--data", str(tmp_path), "--out", str(out),
                 "--models", str(models_dir), "--reps", "20"]) == 0
    report = json.loads((out / "external.json").read_text())
    assert report["cine_loops"] == 1 and report["failed"] == 1
    with (out / "external_images.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    loop_row, missing = rows[0], rows[1]
    assert (loop_row["frame"], loop_row["frames"]) == ("3", "3")
    assert "holds 3 frames" in missing["error"]
    # frame 3 is the image itself: the same reading and the same Dice as the PNG's
    png = rows[2]
    assert float(loop_row["probability"]) == pytest.approx(float(png["probability"]), abs=2e-6)
    assert float(loop_row["dice"]) == pytest.approx(float(png["dice"]), abs=1e-6)
    assert png["frame"] == "" and png["frames"] == ""
