"""``busdx report``: every figure and table of the results, regenerated from the bundled models.

It re-runs the evaluations on the test fold (ONNX Runtime, the bundled models), draws the figures,
and writes three Markdown documents from code: ``reports/REPORT.md``, ``models/MODEL_CARD.md``
(rendered from ``models/model_card.json``) and the results block of the README. The numbers in
the README and the model card come from the card, which ``busdx evaluate`` writes; the report
checks that its own re-evaluation agrees with them and says so when it does not.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busdx import DISCLAIMER
from busdx.evaluation.model_card import load_card
from busdx.hardware import hardware_text
from busdx.models.contract import MODEL_CARD_FILE, SEGMENTER_FILE

log = logging.getLogger(__name__)

README_START = "<!-- results:start (written by `busdx report`; do not edit by hand) -->"
README_END = "<!-- results:end -->"
HISTORY_FILES = {"segmenter": "segmenter_history.json", "classifier": "classifier_history.json"}


@dataclass
class ReportResult:
    out: Path
    figures: dict[str, Path] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _history_as_lists(history) -> dict:
    """Training histories come as a dict of lists or a list of per-epoch dicts."""
    if isinstance(history, dict):
        return history
    merged: dict[str, list] = defaultdict(list)
    for row in history:
        for k, v in row.items():
            merged[k].append(v)
    return dict(merged)


def plot_per_scanner(seg_scores, cls_by_scanner: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_scanner: dict[str, list[float]] = defaultdict(list)
    for s in seg_scores:
        by_scanner[s.scanner].append(s.dice)
    scanners = sorted(set(by_scanner) | set(cls_by_scanner))
    short = [s.split("@")[0].strip() for s in scanners]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    a.boxplot([by_scanner.get(s, [np.nan]) for s in scanners], tick_labels=short, showmeans=True)
    for i, s in enumerate(scanners, start=1):
        a.annotate(f"n={len(by_scanner.get(s, []))}", (i, 0.02), ha="center", fontsize=8)
    a.set_ylim(0, 1.02)
    a.set_ylabel("Dice (original resolution)")
    a.set_title("Segmentation, per image")
    x = np.arange(len(scanners))
    for offset, key, colour in ((-0.2, "sensitivity", "#e0443e"), (0.0, "specificity", "#3e8ee0"),
                                (0.2, "auc", "#55A868")):
        vals = [cls_by_scanner.get(s, {}).get(key, np.nan) for s in scanners]
        b.bar(x + offset, vals, 0.2, label=key, color=colour)
    for i, s in enumerate(scanners):
        b.annotate(f"n={cls_by_scanner.get(s, {}).get('n', 0)}", (i, 0.02), ha="center", fontsize=8)
    b.set_xticks(x, short)
    b.set_ylim(0, 1.05)
    b.set_title("Classification (end to end)")
    b.legend(fontsize=8, loc="lower right")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Results per scanner on the test fold (AUC needs both classes; n/a otherwise)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def classification_by_scanner(preds, records, threshold: float) -> dict[str, dict]:
    from busdx.evaluation.classification import binary_metrics, roc_auc

    scanner_of = {r.id: r.scanner for r in records}
    groups: dict[str, list] = defaultdict(list)
    for p in preds:
        groups[scanner_of[p.id]].append(p)
    out = {}
    for scanner, group in groups.items():
        y = np.array([p.label for p in group])
        prob = np.array([p.prob for p in group])
        m = binary_metrics(y, prob >= threshold)
        both = 0 < y.sum() < len(y)
        out[scanner] = {
            "n": len(group),
            "malignant": int(y.sum()),
            "auc": roc_auc(y, prob) if both else None,
            "sensitivity": m.recall if y.sum() else None,
            "specificity": m.specificity if y.sum() < len(y) else None,
        }
    return out


def _ci(results: dict, metric: str) -> str:
    ci = results.get(f"{metric}_ci95")
    return f" ({_fmt(ci[0])}-{_fmt(ci[1])})" if ci else ""


def _ci_label(results: dict, metric: str) -> str:
    return " (95% CI, patient bootstrap)" if results.get(f"{metric}_ci95") else ""


def results_table(card: dict) -> str:
    """The Markdown table of headline results, from the model card."""
    seg = card.get("segmenter", {}).get("test", {})
    cls = card.get("classifier", {}).get("test", {})
    rows = ["| what | value | on |", "|---|---|---|"]
    if seg:
        d, i = seg.get("dice", {}), seg.get("iou", {})
        on = f"fold {seg.get('test_fold')} ({seg.get('test_images')} images), original resolution"
        rows.append(f"| segmentation Dice, mean ± sd | {_fmt(d.get('mean'))} ± {_fmt(d.get('std'))} | {on} |")
        rows.append(f"| segmentation IoU, mean ± sd | {_fmt(i.get('mean'))} ± {_fmt(i.get('std'))} | {on} |")
    if cls:
        ci = cls.get("auc_ci95") or [None, None]
        on = f"fold {cls.get('test_fold', seg.get('test_fold', 5))} ({cls.get('n')} images), " + (
            "end to end (predicted masks)" if cls.get("masks") == "predicted"
            else "ground-truth masks")
        rows += [
            f"| ROC AUC (95% CI, patient bootstrap) | {_fmt(cls.get('auc'))} "
            f"({_fmt(ci[0])}-{_fmt(ci[1])}) | {on} |",
            f"| sensitivity at the frozen threshold{_ci_label(cls, 'sensitivity')} | "
            f"{_fmt(cls.get('sensitivity'))}{_ci(cls, 'sensitivity')} | {on} |",
            f"| specificity at the frozen threshold{_ci_label(cls, 'specificity')} | "
            f"{_fmt(cls.get('specificity'))}{_ci(cls, 'specificity')} | {on} |",
            f"| accuracy / precision | {_fmt(cls.get('accuracy'))} / {_fmt(cls.get('precision'))} | {on} |",
            "| TP / FP / TN / FN | "
            + " / ".join(str(cls.get(k)) for k in ("tp", "fp", "tn", "fn")) + f" | {on} |",
            f"| ECE before / after temperature scaling | {_fmt(cls.get('ece_uncalibrated'))} / "
            f"{_fmt(cls.get('ece_calibrated'))} | {on} |",
        ]
    clf = card.get("classifier", {})
    if "threshold" in clf:
        rows.append(f"| operating threshold (calibrated probability) | {_fmt(clf['threshold'], 4)} | "
                    "frozen on validation (sensitivity >= 0.90) |")
    return "\n".join(rows)


def render_readme_block(card: dict, figures: dict[str, Path], readme_dir: Path) -> str:
    lines = [README_START, "", results_table(card), ""]
    pictures = [(k, figures[k]) for k in ("segmentation_examples", "classifier_roc",
                                          "classifier_reliability", "per_scanner") if k in figures]
    for name, path in pictures:
        rel = Path(os.path.relpath(Path(path).resolve(), readme_dir.resolve()))
        lines.append(f"![{name.replace('_', ' ')}]({rel.as_posix()})")
    lines += ["", "All figures: `reports/REPORT.md`. The model card: `models/MODEL_CARD.md`.", "",
              README_END]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")


def _training_lines(section: dict) -> list[str]:
    train = section.get("training", {})
    if not train:
        return ["- training: not recorded"]
    out = []
    for key in ("command", "hardware", "wall_time_minutes", "epochs", "best_epoch", "loss",
                "encoder", "backbone", "input", "seed"):
        if key in train:
            value = train[key]
            if key == "hardware":
                value = hardware_text(value)
            out.append(f"- {key.replace('_', ' ')}: `{value}`" if key == "command"
                       else f"- {key.replace('_', ' ')}: {value}")
    return out


def _run_note(training: dict) -> str:
    return f"; {training['note']}" if training.get("note") else ""


def _selection_lines(selection: dict | None, title: str = "selection") -> list[str]:
    """The segmenter's validation comparison as a table, when the card holds one."""
    if not selection:
        return []
    dice = selection.get("val_dice_original_resolution") or {}
    post = selection.get("val_dice_postprocessed") or {}
    skipped = selection.get("not_eligible") or {}
    lines = [f"- {title} on {selection.get('split', 'validation')}: {selection.get('rule')}; "
             f"shipped: {selection.get('chosen')}", "",
             "  | candidate | validation Dice | postprocessed | |", "  |---|---|---|---|"]
    for name, value in dice.items():
        note = "shipped" if name == selection.get("chosen") else skipped.get(name, "")
        lines.append(f"  | {name} | {_fmt(value, 4)} | {_fmt(post.get(name), 4)} | {note} |")
    return [*lines, ""]


def _sweep_lines(sweep: dict | None) -> list[str]:
    """The validation sweep of the segmenter's mask threshold, when the card holds one."""
    if not sweep:
        return []
    dice = ", ".join(f"{t}: {_fmt(v, 4)}" for t, v in sweep.get("val_dice_by_threshold", {}).items())
    return [f"- mask threshold swept on {sweep.get('split', 'validation')} ({sweep.get('rule')}): "
            f"{dice}; served: {sweep.get('chosen')}", ""]


def _input_limit(kind: str) -> str:
    if kind == "both":
        return ("The classifier sees a crop around the lesion and, beside it, the whole image, "
                "text included; the malignant share differs between BUS-BRA's scanners, so part "
                "of what it learnt from the whole image may be the scanner.")
    if kind == "image":
        return "The classifier sees the whole image, text included."
    return ("The classifier sees a crop around the lesion, which removes most of the text, but "
            "not all of it.")


def render_model_card(card: dict) -> str:
    seg, clf = card.get("segmenter", {}), card.get("classifier", {})
    lines = [
        "# busdx model card",
        "",
        "_Rendered by `busdx report` from `models/model_card.json`; do not edit by hand._",
        "",
        f"> {DISCLAIMER}",
        "",
        "## Intended use",
        "",
        "A second read for radiologists and sonographers looking at a B-mode breast ultrasound image "
        "that shows one lesion: an outline, a calibrated probability of malignancy, a benign or "
        "malignant call at a threshold chosen for high sensitivity, a BI-RADS-aligned risk band, "
        "a heatmap and measurements. It is decision support for trained readers, not a diagnosis; "
        "it is not meant for screening images without a lesion, for Doppler or elastography, or "
        "for use without a clinician.",
        "",
        "## Data and splits",
        "",
        "BUS-BRA (Gómez-Flores et al., Medical Physics 2024, doi:10.1002/mp.16812): 1,875 images of "
        "1,064 patients from one hospital in Brazil, four scanners, biopsy-proven pathology. The "
        "test set is official fold 5 of `5-fold-cv.csv`; training and validation come from folds "
        "1-4, split by patient and stratified by pathology (15% of patients for validation). "
        "Everything chosen (loss, epochs, calibration, threshold) was chosen on validation only.",
        "",
        "## Results on the test fold",
        "",
        results_table(card),
        "",
    ]
    seg_test = seg.get("test", {})
    if seg_test.get("dice_per_scanner"):
        lines += ["Segmentation Dice per scanner:", "", "| scanner | n | mean | sd |", "|---|---|---|---|"]
        for scanner, s in sorted(seg_test["dice_per_scanner"].items()):
            lines.append(f"| {scanner} | {s.get('n')} | {_fmt(s.get('mean'))} | {_fmt(s.get('std'))} |")
        lines.append("")
    birads = clf.get("test", {}).get("birads", {})
    if birads:
        stats = {k: v for k, v in birads.items() if k != "table" and not isinstance(v, dict | list)}
        if stats:
            lines += ["Agreement of the risk band with the radiologists' BI-RADS on the test fold: "
                      + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in stats.items()) + ".",
                      ""]
    lines += ["## Models", "", "### Segmenter (`segmenter.onnx`)", ""]
    lines += _training_lines(seg)
    for key in ("architecture", "encoder", "ensemble", "loss_comparison",
                "architecture_comparison", "validation"):
        if seg.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {json.dumps(seg[key])}")
    lines += _selection_lines(seg.get("selection"))
    for earlier in reversed(seg.get("selection_history") or []):
        lines += _selection_lines(earlier, "earlier selection")
    lines += _sweep_lines(seg.get("threshold_sweep"))
    for member in seg.get("members") or []:
        train = member.get("training", {})
        lines.append(f"- member `{member.get('checkpoint')}` ({member.get('encoder')}): "
                     f"`{train.get('command')}`, {train.get('minutes')} min on "
                     f"{hardware_text(train.get('hardware'))}, best validation Dice "
                     f"{_fmt(train.get('best_val_dice'))} at epoch {train.get('best_epoch')}"
                     + _run_note(train))
    for name, run in (seg.get("candidate_runs") or {}).items():
        train = run.get("training", {})
        lines.append(f"- candidate `{name}`, trained and not shipped "
                     f"({run.get('why_not_compared') or 'see selection'}): "
                     f"`{train.get('command')}`, {train.get('minutes')} min on "
                     f"{hardware_text(train.get('hardware'))}, best validation Dice "
                     f"{_fmt(train.get('best_val_dice'))} at epoch {train.get('best_epoch')}"
                     + _run_note(train))
    lines += ["", "### Classifier (`classifier.onnx`)", ""]
    lines += _training_lines(clf)
    for key in ("backbone", "ensemble", "input", "weights_storage", "crop", "tta", "temperature",
                "threshold",
                "option_rule", "candidates", "crop_comparison_val_auc", "comparisons",
                "validation"):
        if clf.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {json.dumps(clf[key])}")
    cal_command = (clf.get("calibration") or {}).get("command")
    if cal_command:
        lines.append(f"- selection and calibration on validation: `{cal_command}`")
    mirror = clf.get("mirror_comparison")
    if mirror:
        scores = ", ".join(f"{k} {_fmt(v)}" for k, v in mirror.get("val_auc", {}).items())
        lines.append(f"- mirror averaging, validation AUC: {scores}; shipped: "
                     f"{mirror.get('chosen')} ({mirror.get('rule')}; {mirror.get('budget')})")
    for member in clf.get("members") or []:
        train = member.get("training") or {}
        lines.append(f"- member `{member.get('checkpoint')}` ({member.get('arch')}, input "
                     f"{member.get('config', {}).get('input', 'crop')}, epoch "
                     f"{member.get('epoch')}, validation AUC in training "
                     f"{_fmt(member.get('val_auc_training'))})"
                     + (f": `{train['command']}`, {train.get('wall_minutes')} min on "
                        f"{hardware_text(train.get('hardware'))}" + _run_note(train) if train.get("command")
                        else ""))
    lines += [
        "",
        "## Limits",
        "",
        "- Trained and tested on one hospital's images (BUS-BRA, Brazil) and four scanners; "
        "performance on other hospitals, scanners, presets and populations is unknown and is "
        "expected to be lower. Validate locally before any use: `busdx evaluate external "
        "--data DIR --out OUT` scores the models, as served, on your own labelled images.",
        "- Every BUS-BRA image carries burned-in scanner text and some carry caliper marks: a "
        "model can learn such shortcuts. " + _input_limit(clf.get("input", "crop")),
        "- One lesion per image is assumed; the largest predicted region is analysed.",
        "- The risk band maps the calibrated probability onto BI-RADS likelihood ranges. It is an "
        "aid to reading the probability, not a BI-RADS assessment, which also weighs the "
        "clinical context.",
        "- The calibration and the threshold were fitted on BUS-BRA validation patients; "
        "a different population shifts both.",
        "- Not a medical device; not cleared or approved by any regulator.",
        "",
    ]
    return "\n".join(lines)


def run_report(data, out: str | Path, models_dir: str | Path, test_fold: int = 5,
               readme: str | Path | None = None, threads: int | None = None) -> ReportResult:
    from busdx.data.index import load_index
    from busdx.data.preview import preview
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.classification import evaluate_predictions, predict_records
    from busdx.evaluation.classification_plots import save_figures
    from busdx.evaluation.plots import plot_learning_curves
    from busdx.evaluation.segmentation import evaluate_segmenter

    out, models_dir = Path(out), Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = load_card(models_dir / MODEL_CARD_FILE)
    result = ReportResult(out=out)
    figures = result.figures

    log.info("data preview")
    figures["data_preview"] = preview(data, out / "data_preview.png", SplitConfig(test_fold=test_fold))

    for name, filename in HISTORY_FILES.items():
        # ``segmenter_history.json``, and one ``segmenter_history_<member>.json`` per further
        # network of an ensemble
        stem = Path(filename).stem
        for path in sorted(models_dir.glob(f"{stem}*.json")):
            member = path.stem[len(stem):].strip("_")
            key = f"{name}_{member}" if member else name
            history = _history_as_lists(json.loads(path.read_text()))
            title = f"{name} ({member} member)" if member else name
            figures[f"{key}_learning_curves"] = plot_learning_curves(
                history, out / f"{key}_learning_curves.png", title=f"{title}: learning curves")

    log.info("segmentation: re-evaluating %s on fold %d", SEGMENTER_FILE, test_fold)
    seg = evaluate_segmenter(data, models_dir / SEGMENTER_FILE, test_fold, card_path=None,
                             figures_dir=out, threads=threads)
    figures["segmentation_examples"] = out / "segmentation_examples.png"
    card_dice = card.get("segmenter", {}).get("test", {}).get("dice", {}).get("mean")
    if card_dice is not None and round(card_dice, 3) != round(seg.mean_dice, 3):
        result.mismatches.append(f"segmenter Dice: card {card_dice:.4f}, now {seg.mean_dice:.4f}")

    log.info("classification: re-evaluating end to end on fold %d", test_fold)
    records = make_split(load_index(data), SplitConfig(test_fold=test_fold)).test
    clf = card.get("classifier", {})
    preds, empty = predict_records(records, models_dir, masks="predicted", threads=threads or 1)
    cls_report = evaluate_predictions(preds, clf["temperature"], clf["threshold"], "predicted", empty)
    for path in save_figures(preds, cls_report, out):
        figures[path.stem] = path
    for key in ("auc", "sensitivity", "specificity"):
        card_value = clf.get("test", {}).get(key)
        now = getattr(cls_report, key)
        if card_value is not None and round(card_value, 3) != round(now, 3):
            result.mismatches.append(f"classifier {key}: card {card_value:.4f}, now {now:.4f}")

    per_scanner = classification_by_scanner(preds, records, clf["threshold"])
    figures["per_scanner"] = plot_per_scanner(seg.scores, per_scanner, out / "results_per_scanner.png")

    (out / "REPORT.md").write_text(_report_markdown(card, figures, out, per_scanner, result),
                                   encoding="utf-8")
    (models_dir / "MODEL_CARD.md").write_text(render_model_card(card), encoding="utf-8")
    if readme is not None:
        readme = Path(readme)
        update_readme(readme, render_readme_block(card, figures, readme.parent))
    for m in result.mismatches:
        log.warning("the re-evaluation disagrees with the model card: %s", m)
    return result


def _report_markdown(card, figures, out: Path, per_scanner, result: ReportResult) -> str:
    lines = ["# busdx results", "", "_Written by `busdx report`; do not edit by hand._", "",
             f"> {DISCLAIMER}", "", results_table(card), ""]
    if result.mismatches:
        lines += ["**The re-evaluation disagrees with the model card:**", ""]
        lines += [f"- {m}" for m in result.mismatches] + [""]
    else:
        lines += ["The re-evaluation of the bundled models reproduces the model card.", ""]
    lines += ["## Per scanner (classification, end to end)", "",
              "| scanner | n | malignant | AUC | sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for scanner, s in sorted(per_scanner.items()):
        lines.append(f"| {scanner} | {s['n']} | {s['malignant']} | {_fmt(s['auc'])} | "
                     f"{_fmt(s['sensitivity'])} | {_fmt(s['specificity'])} |")
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        rel = Path(path).relative_to(out).as_posix()
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({rel})", ""]
    return "\n".join(lines)
