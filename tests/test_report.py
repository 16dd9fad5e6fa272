"""The report: figures, REPORT.md, MODEL_CARD.md and the README block, all written by code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from busdx.evaluation.card_markdown import headline_table, render_history
from busdx.evaluation.report import (
    README_END,
    README_START,
    results_table,
    run_report,
    update_readme,
)
from stand_in_models import REPO, build_stand_in_models

CARD = {
    "segmenter": {"test": {"test_fold": 5, "test_images": 383, "dice": {"mean": 0.87654, "std": 0.1},
                           "iou": {"mean": 0.8, "std": 0.12},
                           "dice_per_scanner": {"GE Logiq 5": {"n": 10, "mean": 0.9, "std": 0.05}}},
                  "training": {"command": "busdx train segmentation --data D", "hardware": "2 CPUs"}},
    "classifier": {"threshold": 0.2345, "temperature": 1.3,
                   "test": {"n": 383, "masks": "predicted", "auc": 0.91234, "auc_ci95": [0.88, 0.94],
                            "sensitivity": 0.9, "specificity": 0.8, "accuracy": 0.83,
                            "precision": 0.7, "tp": 109, "fp": 52, "tn": 210, "fn": 12,
                            "ece_uncalibrated": 0.08, "ece_calibrated": 0.03}},
}


def test_results_table_comes_from_the_card():
    table = results_table(CARD)
    assert "0.877 ± 0.100" in table
    assert "0.912 (0.880-0.940)" in table
    assert "109 / 52 / 210 / 12" in table
    assert "0.2345" in table
    assert "end to end" in table
    assert "| sensitivity at the frozen threshold | 0.900 |" in table  # no CI recorded: none shown
    card = json.loads(json.dumps(CARD))
    card["classifier"]["test"].update(sensitivity_ci95=[0.84, 0.95], specificity_ci95=[0.75, 0.85])
    table = results_table(card)
    assert ("| sensitivity at the frozen threshold (95% CI, patient bootstrap) | 0.900 "
            "(0.840-0.950) |") in table
    assert "0.800 (0.750-0.850)" in table
    assert "BI-RADS" not in table  # no reader comparison recorded: no row
    card["classifier"]["test"]["readers"] = {
        "n": 383, "model_auc": 0.912, "model_auc_ci95": [0.88, 0.94], "birads_auc": 0.889,
        "birads_auc_ci95": [0.86, 0.92], "difference": 0.023, "difference_ci95": [-0.012, 0.058]}
    assert ("| radiologists' BI-RADS as a score: ROC AUC (95% CI); the model minus it | 0.889 "
            "(0.860-0.920); +0.023 (-0.012 to +0.058) |") in results_table(card)


def test_headline_table_puts_each_hospital_in_a_column():
    """The README's table: BUS-BRA's test fold, then each hospital never trained on; a figure
    not measured for a hospital says so rather than borrowing another's."""
    card = json.loads(json.dumps(CARD))
    assert headline_table(card).splitlines()[0] == (
        "|  | BUS-BRA test fold: the training hospital's held-out patients |")
    card["external"] = {"breast_test": {"auc": 0.9, "auc_ci95": [0.85, 0.95], "sensitivity": 0.8,
                                        "specificity": 0.7, "dice": 0.78,
                                        "what": "BrEaST-Lesions-USG (test), 126 lesion images"}}
    card["no_lesion"] = {"test": {"sites": {"breast": {
        "lesion_free_reported_no_lesion": {"share": 0.865, "n": 96},
        "lesion_images_with_a_lesion_found": {"share": 0.992, "n": 126}}}}}
    table = headline_table(card)
    assert "| BrEaST-Lesions-USG (test): a hospital never trained on |" in table
    assert "| malignancy: ROC AUC (95% CI) | 0.912 (0.880-0.940) | 0.900 (0.850-0.950) |" in table
    assert "| sensitivity / specificity at the operating threshold | 90.0% / 80.0% | 80.0% / 70.0% |" in table
    assert "| lesion outline: Dice, mean | 0.877 | 0.780 |" in table
    assert "| \"no lesion\" on lesion-free images | not measured | 86.5% of 96 |" in table
    assert headline_table({}) == "No evaluation of this release is on record yet."


def test_model_card_has_use_limits_and_numbers():
    text = render_history(CARD)
    for needle in ("not a diagnosis", "Intended use", "Limits", "one hospital", "burned-in",
                   "not a medical device", "0.912", "busdx train segmentation", "GE Logiq 5"):
        assert needle.lower() in text.lower(), needle


def test_model_card_prints_hardware_records_as_prose():
    card = json.loads(json.dumps(CARD))
    card["segmenter"]["training"]["hardware"] = {
        "cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 16, "device": "cuda",
        "gpu": "NVIDIA H200", "torch": "2.11.0", "torch_threads": 2}
    card["classifier"]["members"] = [{"checkpoint": "runs/c/classifier.pt", "arch": "lite1",
                                      "training": {"command": "busdx train classification",
                                                   "hardware": {"cpu": "AMD EPYC", "cpu_count": 2,
                                                                "device": "cpu", "threads": 2,
                                                                "torch": "2.14.1"}}}]
    card["classifier"]["training"] = {"command": "busdx train classification", "hardware": "2 CPUs"}
    text = render_history(card)
    assert "NVIDIA H200 GPU (16-core Intel(R) Xeon(R) Processor host), torch 2.11.0, 2 thread(s)" \
        in text
    assert "CPU only, 2-core AMD EPYC, torch 2.14.1, 2 thread(s)" in text
    assert "{'cpu'" not in text and "2 CPUs" in text  # older string records pass through


def test_model_card_tables_the_segmenter_selection():
    card = json.loads(json.dumps(CARD))
    card["segmenter"]["selection"] = {
        "rule": "highest validation Dice", "chosen": "a", "split": "validation (5 images)",
        "val_dice_original_resolution": {"a": 0.91234, "b": 0.90001, "c": 0.95},
        "val_dice_postprocessed": {"a": 0.9125, "b": 0.9},
        "not_eligible": {"c": "too slow"},
    }
    text = render_history(card)
    assert "shipped: a" in text
    assert "| a | 0.9123 | 0.9125 | shipped |" in text
    assert "| b | 0.9000 | 0.9000 |  |" in text
    assert "| c | 0.9500 | n/a | too slow |" in text


def test_readme_block_is_replaced_not_duplicated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n")
    update_readme(readme, f"{README_START}\nfirst\n{README_END}")
    update_readme(readme, f"{README_START}\nsecond\n{README_END}")
    text = readme.read_text()
    assert text.count(README_START) == 1 and "second" in text and "first" not in text
    assert text.startswith("# x\n\nintro")


def test_report_on_fixtures_with_stand_in_models(fixtures_root, tmp_path):
    models = build_stand_in_models(tmp_path / "models")
    readme = tmp_path / "README.md"
    readme.write_text("# busdx\n")
    result = run_report(fixtures_root, tmp_path / "reports", models, test_fold=5, readme=readme)
    for name in ("data_preview", "segmentation_examples", "classifier_roc", "classifier_confusion",
                 "classifier_reliability", "classifier_band_vs_birads", "per_scanner"):
        path = result.figures[name]
        with Image.open(path) as img:
            assert img.size[0] > 300, name
    report = (tmp_path / "reports" / "REPORT.md").read_text()
    assert "![per_scanner](results_per_scanner.png)" in report
    assert not (models / "MODEL_CARD.md").exists()  # only `busdx release` writes models/
    assert "reports/classifier_roc.png" in readme.read_text()


@pytest.mark.parametrize("missing", ["segmenter.onnx", "release.json"])
def test_report_cli_says_what_is_missing(fixtures_root, tmp_path, missing, caplog):
    from busdx.cli.main import main

    models = build_stand_in_models(tmp_path / "models")
    (models / missing).unlink()
    code = main(["report", "--data", str(fixtures_root), "--models", str(models),
                 "--out", str(tmp_path / "r"), "--no-readme"])
    assert code == 2 and missing in caplog.text


def test_history_file_gives_learning_curves(fixtures_root, tmp_path):
    models = build_stand_in_models(tmp_path / "models")
    (models / "segmenter_history.json").write_text(json.dumps(
        {"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4], "val_loss": [0.9, 0.7, 0.6],
         "val_dice": [0.5, 0.7, 0.8]}))
    result = run_report(fixtures_root, tmp_path / "r", models, test_fold=5, readme=None)
    assert result.figures["segmenter_learning_curves"].is_file()


def test_bundled_model_card_renders_records_as_tables_not_raw_json():
    from busdx.evaluation.model_card import load_card

    card = load_card(REPO / "models")
    text = render_history(card)
    assert '{"' not in text and "{'" not in text  # no record dumped as JSON or a Python dict
    assert "| loss | validation Dice |" in text
    assert "| architecture | validation Dice |" in text
    assert "| ROC AUC |" in text  # calibration on validation
    assert "| none | validation AUC |" not in text
    assert "| imbalance | validation AUC | balanced accuracy |" in text
    assert "| band \\ BI-RADS | 2 | 3 | 4 | 5 |" in text and "Spearman correlation" in text
    assert text.count("| shipped |") >= 2  # the segmenter's selection and the classifier's option


def test_the_bundled_card_and_history_page_are_their_rendering():
    """Nobody edited models/MODEL_CARD.md or docs/model_history.md by hand, and the card is
    short, with where the models fail on its first screen."""
    from busdx.evaluation.card import render_history_page, render_model_card
    from busdx.evaluation.evidence import load_records
    from busdx.release import load_release

    release, records = load_release(REPO / "models"), load_records(REPO / "evidence")
    card = (REPO / "models" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == render_model_card(release, records)
    assert (REPO / "docs" / "model_history.md").read_text(encoding="utf-8") == \
        render_history_page(release, records, REPO / "evidence")
    assert len(card.encode()) < 12_000
    assert "## Where it fails" in "\n".join(card.splitlines()[:60])
    assert "/work/" not in card and "rule X" not in card


def test_classifier_options_get_passes_and_the_shipped_mark():
    card = json.loads(json.dumps(CARD))
    card["classifier"].update(
        tta="none", checkpoints=["b.pt", "c.pt"], crop={"contexts": [0.3]},
        option_rule="fewest passes",
        candidates={"both": {"checkpoint": "b.pt", "input": "both", "passes_per_crop": 2},
                    "crop": {"checkpoint": "c.pt", "input": "crop", "passes_per_crop": 1}},
        crop_comparison_val_auc={"model=ensemble_both_crop, tta=flip, contexts=0.3": 0.95,
                                 "model=ensemble_both_crop, tta=none, contexts=0.3": 0.94,
                                 "model=both, tta=flip_crop, contexts=0.3": 0.93,
                                 "model=crop, tta=none, contexts=0.3": 0.92})
    text = render_history(card)
    assert "| ensemble_both_crop | flip | 0.3 | 6 | 0.9500 |  |" in text
    assert "| ensemble_both_crop | none | 0.3 | 3 | 0.9400 | shipped |" in text
    assert "| both | flip_crop | 0.3 | 3 | 0.9300 |  |" in text
    assert "| crop | none | 0.3 | 1 | 0.9200 |  |" in text


def test_classifier_member_selection_is_tabled_best_first():
    card = json.loads(json.dumps(CARD))
    card["classifier"]["member_selection"] = {
        "rule": "beat the shipped ensemble by >= 0.005", "split": "validation", "chosen": "a + c",
        "val_auc": {"a + b (shipped before)": 0.9475, "a + c": 0.95488},
        "passes_per_image": {"a + b (shipped before)": 3, "a + c": 3},
        "new_runs": {"c": {"best_epoch": 11, "wall_minutes": 32.8, "command": "busdx train x"}},
    }
    text = render_history(card)
    assert "Ensemble members, chosen on validation: beat the shipped ensemble by >= 0.005." in text
    shipped = text.index("| a + c | 3 | 0.9549 | shipped |")
    assert shipped < text.index("| a + b (shipped before) | 3 | 0.9475 |  |")
    assert "- `c`: best epoch 11, 32.8 min; `busdx train x`" in text
    card["classifier"]["member_selection_history"] = [{
        "rule": "an older rule", "chosen": "a + b", "val_auc": {"a + b": 0.9475},
        "new_runs": {"b": {"best_epoch": 9, "val_auc_training": 0.93881, "wall_minutes": 2.3,
                           "command": "busdx train y"}}}]
    text = render_history(card)
    assert text.index("Ensemble members, chosen") < text.index(
        "Earlier round of members, chosen on validation: an older rule.")
    assert "- `b`: best epoch 9, validation AUC in training 0.9388, 2.3 min; `busdx train y`" in text


def test_validation_rates_show_their_counts_and_interval_when_the_card_has_them():
    cal = {"val_auc": 0.95, "n_val": 226, "method": "Platt", "val_sensitivity": 68 / 75,
           "val_specificity": 132 / 151}
    card = {"classifier": {"calibration": dict(cal)}}
    assert "| sensitivity at the threshold | 0.907 |" in render_history(card)
    cal.update(val_cancers_called=68, val_cancers=75, val_benign_cleared=132, val_benign=151)
    text = render_history({"classifier": {"calibration": cal}})
    assert "| sensitivity at the threshold | 0.907 (68/75; 95% CI 0.82-0.95, Wilson) |" in text
    assert "| specificity at the threshold | 0.874 (132/151; 95% CI 0.81-0.92, Wilson) |" in text


def test_readme_captures_block_is_the_recorded_studies():
    """The frame and dual-view numbers in docs/studies.md are the studies' recorded answers."""
    from busdx.evaluation.report import CAPTURES_END, CAPTURES_START, render_captures_block

    root = Path(__file__).resolve().parent.parent
    block = render_captures_block(root / "reports" / "studies")
    assert block is not None and "| split into its panes (served) |" in block
    readme = (root / "docs" / "studies.md").read_text(encoding="utf-8")
    start, end = readme.index(CAPTURES_START), readme.index(CAPTURES_END) + len(CAPTURES_END)
    assert readme[start:end] == block
    assert render_captures_block(root / "no such folder") is None


def test_readme_results_are_the_rendering_of_the_evidence():
    """The README's results block is written by code from the release and its evidence."""
    from busdx.evaluation.report import readme_results_block

    root = Path(__file__).resolve().parent.parent
    block = readme_results_block(root / "models", root / "reports", root)
    readme = (root / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    assert readme[start:end] == block
    assert "| malignancy: ROC AUC (95% CI) |" in block and "MODEL_CARD.md" in block


def test_the_bundled_models_keep_to_their_size_budget():
    """models/ (graphs, release, card, learning curves) stays within the project's 40 MB: every
    retrain adds its graphs to the history, and a deployment ships the folder."""
    total = sum(p.stat().st_size for p in (REPO / "models").iterdir() if p.is_file())
    assert total <= 40e6, f"models/ holds {total / 1e6:.1f} MB"


def test_release_restamps_the_staging_exports_record_and_carries_the_bundled_ones(tmp_path):
    """`busdx release --restamp` ships a record the staging folder wrote before its last
    settings (the export's, stamped with the graph before the checks went on top), and
    `--carry` one about the release being replaced; both are stamped with the new release and
    listed in release.carried. A name that is not such a record is refused."""
    from busdx.cli.main import main
    from busdx.evaluation.evidence import load_records, write_record
    from busdx.release import load_release

    models = build_stand_in_models(tmp_path / "models")
    staging = build_stand_in_models(tmp_path / "staging")
    evidence = tmp_path / "evidence"
    previous = load_release(models).version
    write_record(evidence, "segmenter.training", {"epochs": 3}, kind="training",
                 release=previous)
    write_record(staging / "evidence", "segmenter.about", {"onnx_megabytes": 1.5},
                 kind="about", release="0123456789ab")
    common = ["release", "--from", str(staging), "--models", str(models), "--evidence",
              str(evidence), "--docs", ""]
    assert main(common + ["--restamp", "segmenter.training", "--why", "x"]) == 2
    assert main(common + ["--restamp", "segmenter.about"]) == 2  # no --why
    assert main(common + ["--restamp", "segmenter.about", "--carry", "segmenter.training",
                          "--why", "the networks are those exported"]) == 0
    release = load_release(models).version
    records = load_records(evidence)
    assert records["segmenter.about"].release == release
    assert records["segmenter.about"].results == {"onnx_megabytes": 1.5}
    assert records["segmenter.training"].release == release
    carried = records["release.carried"].results
    assert carried["records"] == ["segmenter.training"]
    assert carried["restamped"] == {"segmenter.about": "0123456789ab"}
