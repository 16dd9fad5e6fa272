"""``busdx report``: every figure and table of the results, regenerated from the bundled models.

It re-runs the evaluations on the test fold (ONNX Runtime, the bundled models), draws the figures,
and writes two Markdown documents from code: ``reports/REPORT.md`` and the results block of the
README. The numbers in the README come from the evidence that ``busdx evaluate`` writes; the
report checks that its own re-evaluation agrees with them and says so when it does not. (The
model card is written by ``busdx release``, the one command that writes models/.)
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
from busdx.evaluation.card_markdown import fmt as _fmt
from busdx.evaluation.card_markdown import headline_table, results_table
from busdx.evaluation.model_card import load_card
from busdx.models.contract import SEGMENTER_FILE

log = logging.getLogger(__name__)

README_START = "<!-- results:start (written by `busdx report`; do not edit by hand) -->"
README_END = "<!-- results:end -->"
CAPTURES_START = "<!-- captures:start (written by `busdx report`; do not edit by hand) -->"
CAPTURES_END = "<!-- captures:end -->"
HISTORY_FILES = {"segmenter": "segmenter_history.json", "classifier": "classifier_history.json"}


@dataclass
class ReportResult:
    out: Path
    figures: dict[str, Path] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


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


def render_readme_block(card: dict, figures: dict[str, Path], readme_dir: Path) -> str:
    """The README's results: the headline table and two figures; the rest is linked."""
    lines = [README_START, "", headline_table(card), ""]
    pictures = [(k, figures[k]) for k in ("segmentation_examples", "classifier_roc")
                if k in figures]
    for name, path in pictures:
        rel = Path(os.path.relpath(Path(path).resolve(), readme_dir.resolve()))
        lines.append(f"![{name.replace('_', ' ')}]({rel.as_posix()})")
    lines += ["", "Every result with its interval and counts, and where the models fail: "
              "[the model card](models/MODEL_CARD.md). All figures: `reports/REPORT.md`.", "",
              README_END]
    return "\n".join(lines)


FIGURES = {"segmentation_examples": "segmentation_examples.png",
           "classifier_roc": "classifier_roc.png",
           "classifier_reliability": "classifier_reliability.png",
           "per_scanner": "results_per_scanner.png"}


def readme_results_block(models_dir: Path, reports: Path, readme_dir: Path) -> str:
    """The README's results block from the release in ``models_dir``, its evidence and the
    figures already in ``reports`` (as `busdx report` last drew them)."""
    figures = {k: reports / f for k, f in FIGURES.items() if (reports / f).is_file()}
    return render_readme_block(load_card(models_dir), figures, readme_dir)


def update_readme(readme: Path, block: str, start: str = README_START, end: str = README_END,
                  heading: str = "Results") -> None:
    """Replace the block between ``start`` and ``end``, or append it under ``heading``."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")


def render_captures_block(studies: Path) -> str | None:
    """What a black frame, a dual-view capture and a scanner's screen do to the calls, from the
    recorded answers of studies/margins.py, studies/dual_view.py and
    studies/scanner_screens.py (None when either of the first two is missing)."""
    try:
        margins = json.loads((studies / "margins.json").read_text())
        dual = json.loads((studies / "dual_view.json").read_text())
    except FileNotFoundError:
        return None
    frames = margins["conditions"]
    rows = []
    for name in (k for k in margins["frames"] if k != "none"):
        uncut, cut = frames[f"{name}, not cut"], frames[f"{name}, cut"]
        rows.append(f"| {name} | {_fmt(uncut['auc'])} / {_fmt(cut['auc'])} | "
                    f"{_fmt(uncut['sensitivity'])} / {_fmt(cut['sensitivity'])} | "
                    f"{uncut['calls_flipped']} / {cut['calls_flipped']} | {cut['images_cut']} |")
    none = frames["none"]
    names = {"whole": "the capture as one image", "split": "split into its panes (served)",
             "halves": "the two original images"}
    readings = [f"| {names[k]} | {_fmt(r['auc'])} | {_fmt(r['sensitivity'])} | "
                f"{_fmt(r['specificity'])} | {r['calls_unlike_halves']} |"
                for k, r in dual["readings"].items()]
    return "\n".join([
        CAPTURES_START, "",
        f"Black frames on the {margins['n']} validation images ({margins['malignant']} "
        f"malignant; unframed: AUC {_fmt(none['auc'])}, sensitivity "
        f"{_fmt(none['sensitivity'])} at the frozen threshold), uncut / cut "
        "(`reports/studies/margins.json`):", "",
        "| frame | AUC | sensitivity | calls flipped | images cut |", "|---|---|---|---|---|",
        *rows, "",
        f"Dual-view captures rebuilt from the {dual['lesions']} validation lesions with both "
        f"halves ({dual['malignant']} malignant); {dual['captures_split_exactly']} split into "
        "exactly their halves (`reports/studies/dual_view.json`):", "",
        "| read as | AUC | sensitivity | specificity | calls unlike the halves' |",
        "|---|---|---|---|---|", *readings, "",
        *_screens_lines(studies / "scanner_screens.json"),
        *_colour_lines(studies / "colour_overlays.json"),
        CAPTURES_END,
    ])


def _screens_lines(path: Path) -> list[str]:
    """The scanner-screen study's tables for the captures block (none before it has run)."""
    if not path.exists():
        return []
    screens = json.loads(path.read_text())
    names = {"plain": "the image itself", "uncut": "the screen read whole (nothing cut)",
             "screenshot": "the screen as a screenshot (served: cut by its pixels)",
             "dicom": "the screen as a DICOM declaring its region (served)"}
    singles = [f"| {names[k]} | {_fmt(r['auc'])} | {_fmt(r['sensitivity'])} | "
               f"{_fmt(r['specificity'])} | {r['calls_flipped']} | "
               + (f"{r['cut_exactly']} / {r['cut_near']} / {r['scan_cut_into']} |"
                  if "cut_exactly" in r else "- |") for k, r in screens["readings"].items()]
    dual, jpeg = screens["dual_view"], screens["jpeg_screenshot_cut"]
    names = {"dicom": "split at the DICOM's two regions (served)",
             "halves": "the two original images"}
    lesions = [f"| {names[k]} | {_fmt(r['auc'])} | {_fmt(r['sensitivity'])} | "
               f"{_fmt(r['specificity'])} | {r['calls_flipped']} |"
               for k, r in dual["readings"].items()]
    return [
        f"Scanner screens (a title, a settings column, a depth scale and a body marker around "
        f"the scan) made from the {screens['images']} validation images ({screens['malignant']} "
        "malignant), and dual-view screens whose panes touch, from the "
        f"{dual['lesions']} lesions with both halves: {dual['screenshots_refused']} of those "
        f"are refused as screenshots (no gap), and {dual['panes_exact']} split into exactly "
        "their halves at the regions (`reports/studies/scanner_screens.json`):", "",
        "| read as | AUC | sensitivity | specificity | calls flipped | "
        f"cut exactly / within {screens['near_px']} px / into the scan's content |",
        "|---|---|---|---|---|---|", *singles, "",
        f"Saved as JPEG (quality {jpeg['quality']}), which blurs the annotations into the black "
        f"around them, the same screenshots are cut to within {screens['near_px']} px of the "
        f"scan in {jpeg['cut_near']} of {screens['images']} (exactly in {jpeg['cut_exactly']}); "
        "the others keep more of the screen's edge, and "
        f"{jpeg['scan_cut_into']} of them also lost rows or columns the scan shows.", "",
        "| dual-view screen, read as a lesion | AUC | sensitivity | specificity | "
        "calls unlike the halves' |", "|---|---|---|---|---|", *lesions, "",
    ]


def _colour_lines(path: Path) -> list[str]:
    """The colour-overlay study's table for the captures block (none before it has run)."""
    if not path.exists():
        return []
    colour = json.loads(path.read_text())
    names = {"plain": "the image itself", "colour_jpeg": "stored as a colour JPEG",
             "tinted": "a sepia-tinted grey map",
             "doppler": "a colour Doppler box (served: thin colour filled)",
             "elastography": "an elastography map (served: solid colour, not filled)",
             "doppler_unfilled": "a colour Doppler box, read unfilled",
             "elastography_unfilled": "an elastography map, read unfilled"}
    rows = [f"| {names[k]} | {_fmt(r['auc'])} | {_fmt(r['sensitivity'])} | "
            f"{_fmt(r['specificity'])} | {r['calls_flipped']} ({r['calls_flipped_warned']}) | "
            f"{r['warned']} | {r['filled']} |" for k, r in colour["readings"].items()]
    rule = colour["rule_y"]
    s1 = rule["seeds"]["seed1"]
    return [
        f"Colour in the scan, drawn on the {colour['images']} validation images "
        f"({colour['malignant']} malignant; the boxes over each lesion, the flow and the "
        "strain placed at random, whatever the label). The product reads every image as grey, "
        "and warns when more than "
        f"{100 * colour['levels']['colour_share']:.0f}% of the scan is in saturated colour "
        "(`reports/studies/colour_overlays.json`). Thin colour (flow) is filled in from the "
        "grey around it before the analysis; solid colour is left as it is:", "",
        "| the image as | AUC | sensitivity | specificity | calls flipped (of them warned) | "
        "images warned | images filled |", "|---|---|---|---|---|---|---|", *rows, "",
        f"Drawn again with another seed, the Doppler images flip "
        f"{s1['doppler_served']['calls_flipped']} calls served against "
        f"{s1['doppler_unfilled']['calls_flipped']} unfilled (AUC "
        f"{_fmt(s1['doppler_served']['auc'])} against {_fmt(s1['doppler_unfilled']['auc'])}); "
        f"rule Y {'ships' if rule['ships'] else 'does not ship'} (`docs/selection_rules.md`).",
        "",
    ]


def run_report(data, out: str | Path, models_dir: str | Path, test_fold: int = 5,
               readme: str | Path | None = None, threads: int | None = None) -> ReportResult:
    from busdx.data.index import load_index
    from busdx.data.preview import preview
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.classification import by_group, evaluate_predictions, predict_records
    from busdx.evaluation.classification_plots import save_figures
    from busdx.evaluation.segmentation import evaluate_segmenter
    from busdx.training.plots import plot_learning_curves

    out, models_dir = Path(out), Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = load_card(models_dir)
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

    per_scanner = by_group(preds, [r.scanner for r in records], clf["threshold"])
    figures["per_scanner"] = plot_per_scanner(seg.scores, per_scanner, out / "results_per_scanner.png")

    (out / "REPORT.md").write_text(_report_markdown(card, figures, out, per_scanner, result),
                                   encoding="utf-8")
    if readme is not None:
        readme = Path(readme)
        update_readme(readme, render_readme_block(card, figures, readme.parent))
        captures = render_captures_block(out / "studies")
        studies = readme.parent / "docs" / "studies.md"
        if captures is not None and studies.is_file():
            update_readme(studies, captures, CAPTURES_START, CAPTURES_END, "Screen captures")
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
