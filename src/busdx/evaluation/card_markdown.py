"""docs/model_history.md: how the bundled models were made and chosen, for readers.

Every number comes from the JSON card, which the training and evaluation commands write; this
module only lays them out. Records it does not know are left out of the Markdown (they stay in
the JSON), so a new record never shows up as a raw dump.
"""

from __future__ import annotations

import re

from busdx import DISCLAIMER
from busdx.evaluation.classification import wilson_interval
from busdx.evaluation.members import option_members, parse_option
from busdx.hardware import hardware_text
from busdx.models.contract import TTA_COST


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list], indent: str = "") -> list[str]:
    out = [indent + "| " + " | ".join(header) + " |", indent + "|" + "---|" * len(header)]
    out += [indent + "| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in row)
            + " |" for row in rows]
    return [*out, ""]


def _mean_sd(summary: dict | None) -> str:
    summary = summary or {}
    return f"{fmt(summary.get('mean'))} ± {fmt(summary.get('std'))}"


def _ci(results: dict, metric: str) -> str:
    ci = results.get(f"{metric}_ci95")
    return f" ({fmt(ci[0])}-{fmt(ci[1])})" if ci else ""


def _ci_label(results: dict, metric: str) -> str:
    return " (95% CI, patient bootstrap)" if results.get(f"{metric}_ci95") else ""


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pct_ci(r: dict, key: str) -> str:
    ci = r.get(f"{key}_ci95")
    return f"{_pct(r.get(key))}" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)" if ci else "")


def external_rows(card: dict) -> list[list[str]]:
    """[result, value, measured on] rows for the hospitals never trained on (evidence
    ``external.*``) and for "no lesion" (evidence ``no_lesion.test``)."""
    rows = []
    for _, r in sorted((card.get("external") or {}).items()):
        if not isinstance(r, dict) or r.get("auc") is None:
            continue
        on = f"{r.get('what', 'another hospital')}, never trained on"
        rows += [
            ["malignancy: ROC AUC (95% CI)", f"{fmt(r['auc'])}{_ci(r, 'auc')}", on],
            ["sensitivity / specificity at the operating threshold (95% CI)",
             f"{_pct_ci(r, 'sensitivity')} / {_pct_ci(r, 'specificity')}", on],
        ]
        if r.get("dice") is not None:
            rows.append(["lesion outline: Dice, mean (median)",
                         f"{fmt(r['dice'])} ({fmt(r.get('dice_median'))})", on])
    names = {"busbra": "BUS-BRA test fold", "breast": "BrEaST-Lesions-USG test half"}
    for site, s in sorted(((card.get("no_lesion") or {}).get("test") or {}).get("sites", {})
                          .items()):
        free, found = s["lesion_free_reported_no_lesion"], s["lesion_images_with_a_lesion_found"]
        on = f"{names.get(site, site)}: {free['n']} lesion-free images, {found['n']} with a lesion"
        rows += [["\"no lesion\" on lesion-free images (windows beside the lesion, normal scans)",
                  _pct_ci(free, "share"), on],
                 ["a lesion found in images that show one", _pct_ci(found, "share"), on]]
    appearance = (card.get("input_check") or {}).get("appearance") or {}
    places = {"busbra_test": "BUS-BRA test fold, images and lesion-free windows",
              "breast_test": "BrEaST-Lesions-USG test half, scans, windows and normal scans"}
    for name, r in (appearance.get("results") or {}).items():
        if r.get("share") is None:
            continue
        what = ("\"may not be a breast ultrasound\": pictures that are not one, warned or "
                "refused" if name.startswith("not_ultrasound") else
                "\"may not be a breast ultrasound\": breast scans wrongly warned")
        on = places.get(name, f"{r['n']} photographs, charts, CT and MR images and the like "
                              "(tests/fixtures/not-ultrasound)")
        rows.append([what, f"{r['warned']} of {r['n']} ({_pct_ci(r, 'share')})", on])
    return rows


def headline_table(card: dict) -> str:
    """The README's results: the few numbers a reader needs, one column per hospital (BUS-BRA's
    test fold, then each hospital never trained on); every other result is in the model card."""
    seg = (card.get("segmenter") or {}).get("test") or {}
    cls = (card.get("classifier") or {}).get("test") or {}
    sites = ((card.get("no_lesion") or {}).get("test") or {}).get("sites") or {}
    columns = []  # (header, classification results, Dice, no-lesion results)
    if cls or seg:
        columns.append(("BUS-BRA test fold: the training hospital's held-out patients", cls,
                        (seg.get("dice") or {}).get("mean"), sites.get("busbra")))
    for key, r in sorted((card.get("external") or {}).items()):
        if isinstance(r, dict) and r.get("auc") is not None:
            name = str(r.get("what") or key).split(",")[0]
            columns.append((f"{name}: a hospital never trained on", r, r.get("dice"),
                            sites.get(key.split("_")[0])))
    if not columns:
        return "No evaluation of this release is on record yet."

    def no_lesion(s: dict | None, key: str) -> str:
        r = (s or {}).get(key)
        return f"{_pct(r['share'])} of {r['n']}" if r and r.get("n") else "not measured"

    rows = [
        ["malignancy: ROC AUC (95% CI)", *(f"{fmt(c.get('auc'))}{_ci(c, 'auc')}"
                                           for _, c, _, _ in columns)],
        ["sensitivity / specificity at the operating threshold",
         *(f"{_pct(c.get('sensitivity'))} / {_pct(c.get('specificity'))}"
           for _, c, _, _ in columns)],
        ["lesion outline: Dice, mean", *(fmt(d) for _, _, d, _ in columns)],
        ["\"no lesion\" on lesion-free images",
         *(no_lesion(s, "lesion_free_reported_no_lesion") for *_, s in columns)],
        ["a lesion found in images that show one",
         *(no_lesion(s, "lesion_images_with_a_lesion_found") for *_, s in columns)],
    ]
    lines = _table(["", *(header for header, *_ in columns)], rows)
    appearance = ((card.get("input_check") or {}).get("appearance") or {}).get("results") or {}
    pictures = [r for name, r in appearance.items() if name.startswith("not_ultrasound")
                and r.get("n")]
    if pictures:
        r = pictures[0]
        lines.append(f"Pictures that are not breast ultrasound (photographs, charts, CT and MR "
                     f"images): {r['warned']} of {r['n']} warned or refused, and given no call.")
    return "\n".join(lines).rstrip()


def results_table(card: dict) -> str:
    """The Markdown table of headline results, from the model card."""
    seg = card.get("segmenter", {}).get("test", {})
    cls = card.get("classifier", {}).get("test", {})
    rows = ["| what | value | on |", "|---|---|---|"]
    if seg:
        d, i = seg.get("dice", {}), seg.get("iou", {})
        on = f"fold {seg.get('test_fold')} ({seg.get('test_images')} images), original resolution"
        rows.append(f"| segmentation Dice, mean ± sd | {fmt(d.get('mean'))} ± {fmt(d.get('std'))} | {on} |")
        rows.append(f"| segmentation IoU, mean ± sd | {fmt(i.get('mean'))} ± {fmt(i.get('std'))} | {on} |")
        served = (seg.get("postprocessed") or {}).get("dice") or {}
        if card.get("segmenter", {}).get("presence_threshold") is not None and served:
            rows.append("| segmentation Dice as served (none where the presence check says "
                        f"\"no lesion\"), mean ± sd | {fmt(served.get('mean'))} ± "
                        f"{fmt(served.get('std'))} | {on} |")
    if cls:
        ci = cls.get("auc_ci95") or [None, None]
        on = f"fold {cls.get('test_fold', seg.get('test_fold', 5))} ({cls.get('n')} images), " + (
            "end to end (predicted masks)" if cls.get("masks") == "predicted"
            else "ground-truth masks")
        rows += [
            f"| ROC AUC (95% CI, patient bootstrap) | {fmt(cls.get('auc'))} "
            f"({fmt(ci[0])}-{fmt(ci[1])}) | {on} |",
            f"| sensitivity at the frozen threshold{_ci_label(cls, 'sensitivity')} | "
            f"{fmt(cls.get('sensitivity'))}{_ci(cls, 'sensitivity')} | {on} |",
            f"| specificity at the frozen threshold{_ci_label(cls, 'specificity')} | "
            f"{fmt(cls.get('specificity'))}{_ci(cls, 'specificity')} | {on} |",
            f"| accuracy / precision | {fmt(cls.get('accuracy'))} / {fmt(cls.get('precision'))} | {on} |",
            "| TP / FP / TN / FN | "
            + " / ".join(str(cls.get(k)) for k in ("tp", "fp", "tn", "fn")) + f" | {on} |",
            f"| ECE before / after temperature scaling | {fmt(cls.get('ece_uncalibrated'))} / "
            f"{fmt(cls.get('ece_calibrated'))} | {on} |",
        ]
        readers = cls.get("readers")
        if readers:
            rows.append(f"| radiologists' BI-RADS as a score: ROC AUC (95% CI); the model minus "
                        f"it | {fmt(readers['birads_auc'])}{_ci(readers, 'birads_auc')}; "
                        f"{_difference(readers)} | {on} |")
    clf = card.get("classifier", {})
    lesion_test = (clf.get("lesion_reading") or {}).get("test") or {}
    if lesion_test.get("image") and not clf.get("site_calibration"):
        r, n_lesions = lesion_test["image"], lesion_test["lesion"]["n"]
        on = (f"fold {lesion_test.get('test_fold', 5)} ({r['n']} images of {n_lesions} lesions), "
              "end to end, each image scored by its lesion's views")
        rows += [
            f"| lesion reading (the views of one lesion averaged): ROC AUC (95% CI) | "
            f"{fmt(r['auc'])}{_ci(r, 'auc')} | {on} |",
            f"| lesion reading: sensitivity / specificity at its frozen threshold (95% CI) | "
            f"{fmt(r['sensitivity'])}{_ci(r, 'sensitivity')} / {fmt(r['specificity'])}"
            f"{_ci(r, 'specificity')} | {on} |",
        ]
    cv = clf.get("recipe_cross_validation")
    if cv:
        seed, rows_ = next(iter(cv["pooled_auc"].items()))
        rows.append(f"| ROC AUC of the bundled members' recipes, 4-fold cross-validation (out of "
                    f"fold, ground-truth crops, {_seeds_spaced(seed)}; 95% CI) | "
                    f"{_value_ci(rows_['A+B'])} | folds 1-4 ({cv['n_images']} images), "
                    "networks trained for it, not the bundled ones |")
    site = clf.get("site_calibration")
    if site:
        bundled = site.get("bundled") or {}
        rows.append(f"| operating threshold (calibrated probability) | "
                    f"{fmt(bundled.get('threshold'), 4)} | frozen on validation (sensitivity >= "
                    "0.90); the test rows above are at this threshold |")
        rows.append(f"| site threshold (calibrated probability) | {fmt(clf['threshold'], 4)} | "
                    f"refitted on {site.get('n')} images of one site (see Site recalibration) |")
    elif "threshold" in clf:
        rows.append(f"| operating threshold (calibrated probability) | {fmt(clf['threshold'], 4)} | "
                    "frozen on validation (sensitivity >= 0.90) |")
    rows += [f"| {a} | {b} | {c} |" for a, b, c in external_rows(card)]
    return "\n".join(rows)


def point_rate(point: dict, what: str) -> str:
    """``0.893 (108/121; 0.82-0.94)``: an operating point's sensitivity or specificity, as
    busdx.evaluation.site records it, with its count and Wilson 95% interval."""
    hits, misses = ("tp", "fn") if what == "sensitivity" else ("tn", "fp")
    ci = point.get(f"{what}_ci") or [None, None]
    return (f"{fmt(point.get(what))} ({point.get(hits)}/{point.get(hits, 0) + point.get(misses, 0)}; "
            f"{fmt(ci[0], 2)}-{fmt(ci[1], 2)})")


def _site_lines(site: dict | None) -> list[str]:
    """A site recalibration (busdx evaluate external --recalibrate), when the card holds one."""
    if not site:
        return []
    rows = []
    for name, key in (("bundled operating point, as shipped", "shipped"),
                      (f"refit, out of fold ({site.get('folds')} patient folds): expected", "out_of_fold"),
                      ("refit, on the images it was fitted on (optimistic)", "in_sample")):
        point = site.get(key) or {}
        rows.append([name, point_rate(point, "sensitivity"), point_rate(point, "specificity"),
                     fmt(point.get("ece"))])
    lines = [
        "## Site recalibration", "",
        f"These models are the bundled networks with their probability and threshold refitted on "
        f"{site.get('n')} labelled images of one site ({site.get('cancers')} malignant, "
        f"{site.get('benign')} benign; ROC AUC there {fmt(site.get('auc'))}): Platt scaling and "
        f"the most specific threshold keeping sensitivity >= {site.get('target_sensitivity')}. "
        "The networks are unchanged; the BUS-BRA sections below describe them. Only images like "
        "these, from the same site and settings, are covered by the new threshold.", "",
        *_table(["on the site's images", "sensitivity (95% CI)", "specificity (95% CI)", "ECE"],
                rows),
    ]
    facts = [f"- data: `{site.get('data')}`" if site.get("data") else None,
             f"- command: `{site['command']}`" if site.get("command") else None,
             f"- refitted from models version {site.get('from_version')}"
             if site.get("from_version") else None]
    return lines + [f for f in facts if f] + [""]


def _gt_mask_lines(clf: dict) -> list[str]:
    """The classifier on the test fold with ground-truth masks: what the segmenter's errors cost."""
    gt = clf.get("test_gt_masks") or {}
    if "auc" not in gt:
        return []
    return [f"The same classifier given the ground-truth masks instead of the segmenter's (fold "
            f"{gt.get('test_fold', 5)}, {gt.get('n')} images): AUC {fmt(gt['auc'])}"
            f"{_ci(gt, 'auc')}, sensitivity {fmt(gt.get('sensitivity'))}, specificity "
            f"{fmt(gt.get('specificity'))}, TP / FP / TN / FN "
            + " / ".join(str(gt.get(k)) for k in ("tp", "fp", "tn", "fn"))
            + ". The gap to the end-to-end row is what the segmenter's errors cost.", ""]


def _lesion_reading_lines(clf: dict) -> list[str]:
    """Rule X's lesion reading: its validation fit and the test fold in both units."""
    lesion = clf.get("lesion_reading")
    if not lesion or clf.get("site_calibration"):
        return []
    val, test = lesion.get("validation") or {}, lesion.get("test") or {}

    def row(name: str, r: dict, unit: str) -> list:
        return [name, f"{r['n']} {unit}", f"{fmt(r['auc'])}{_ci(r, 'auc')}",
                f"{fmt(r['sensitivity'])}{_ci(r, 'sensitivity')}",
                f"{fmt(r['specificity'])}{_ci(r, 'specificity')}",
                " / ".join(str(r[k]) for k in ("tp", "fp", "tn", "fn"))]

    rows = [[f"validation, per image (the per-image reading: AUC {fmt(val['auc_image_reading'])})",
             f"{val['n']} images", fmt(val["auc_lesion_reading"]), fmt(val["sensitivity"]),
             fmt(val["specificity"]), " / ".join(str(val[k]) for k in ("tp", "fp", "tn", "fn"))]]
    if test.get("image"):
        fold = test.get("test_fold", 5)
        rows += [row(f"fold {fold}, per image", test["image"], "images"),
                 row(f"fold {fold}, per lesion", test["lesion"], "lesions")]
    lines = [
        "## Lesion reading (the views of one lesion)", "",
        "A lesion is documented in two orthogonal planes and BI-RADS is assigned to the lesion; "
        "811 of BUS-BRA's 1,064 lesions come as two images (the `-l` and `-r` halves of a "
        "dual-view capture). Given several images of one lesion (`busdx predict "
        "--lesion-pattern`, the API's `/api/lesion`, or several images on the page), the "
        "product averages their served logits, turns the mean into a probability with the same "
        "temperature, and calls it at its own threshold, fitted on validation by the per-image "
        f"rule over images that each carry their lesion's reading: {fmt(lesion['threshold'], 4)} "
        f"(the per-image threshold stays {fmt(clf.get('threshold'), 4)}). The rule (rule X in "
        "`docs/selection_rules.md`) was fixed before the bundled models were read at lesion "
        "level, and offers the reading only if it ranks validation at least as well as the "
        f"per-image reading: {'it does' if lesion.get('offered') else 'it does not'}. A lesion "
        "given as one image reads as that image, called at the lesion threshold. The rows above "
        "and below that do not say otherwise are the per-image reading.", "",
        *_table(["lesion reading", "n", "ROC AUC (95% CI)", "sensitivity (95% CI)",
                 "specificity (95% CI)", "TP / FP / TN / FN"], rows),
    ]
    if test.get("image"):
        lines.append(f"On fold {test.get('test_fold', 5)}, {test.get('multi_view_lesions')} of "
                     f"the {test['lesion']['n']} lesions have two views. Per lesion, each lesion "
                     "counts once; per image, a lesion seen twice counts twice, as in the "
                     "per-image rows.")
    return lines + [""]


def _group_table(first: str, groups: dict) -> list[str]:
    """A table of evaluation.classification.by_group's results, one row per group."""
    rows = [[name, g["n"], g["malignant"], fmt(g["auc"]), fmt(g["sensitivity"]),
             fmt(g["specificity"]), " / ".join(str(g[k]) for k in ("tp", "fp", "tn", "fn"))]
            for name, g in groups.items()]
    return _table([first, "n", "malignant", "AUC", "sensitivity", "specificity",
                   "TP / FP / TN / FN"], rows)


def signed_interval(ci) -> str:
    """``-0.004 to +0.100``: an interval of a difference, where the sign matters."""
    return f"{ci[0]:+.3f} to {ci[1]:+.3f}"


def _difference(g: dict) -> str:
    """``-0.002 (-0.010 to +0.006)``: a paired difference and its interval."""
    return f"{g['difference']:+.3f} ({signed_interval(g['difference_ci95'])})"


def _value_ci(row) -> str:
    """``0.925 (0.905-0.942)`` from a recorded ``[value, low, high]``."""
    return f"{fmt(row[0])} ({fmt(row[1])}-{fmt(row[2])})"


def _per_scanner_lines(test: dict) -> list[str]:
    """The classifier per scanner on the test fold, end to end at the frozen threshold."""
    groups = test.get("per_scanner")
    if not groups:
        return []
    return ["Classification per scanner (test fold, end to end, frozen threshold; small groups, "
            "wide uncertainty):", "", *_group_table("scanner", groups)]


def _reader_lines(test: dict) -> list[str]:
    """The model beside the radiologists' BI-RADS on the test fold, and per BI-RADS category."""
    readers, groups = test.get("readers"), test.get("per_birads")
    if not readers:
        return []
    lines = ["The radiologists' BI-RADS at the examination, read as a score (2 < 3 < 4 < 5), "
             f"on the same test images: AUC {fmt(readers['birads_auc'])}"
             f"{_ci(readers, 'birads_auc')} against the model's {fmt(readers['model_auc'])}; "
             f"model minus BI-RADS {readers['difference']:+.3f} "
             f"({signed_interval(readers['difference_ci95'])}; "
             "95% CIs from one paired patient bootstrap). The radiologists saw "
             "the live scan and the clinical context, and every BUS-BRA lesion was biopsied "
             "whatever its category: a comparison on these images, not a reader study.", ""]
    if groups:
        lines += ["The model within each BI-RADS category (test fold, end to end, frozen "
                  "threshold): in BI-RADS 4, where a biopsy is recommended, its specificity is "
                  "the share of benign lesions it calls benign; in BI-RADS 2 and 3 its "
                  "sensitivity is the share of the few cancers it calls malignant.", "",
                  *_group_table("BI-RADS", groups)]
    return lines


def _seeds_spaced(text: str) -> str:
    """"seed0" as "seed 0" in the study's record names."""
    return re.sub(r"seed(\d)", r"seed \1", text)


def _ensemble_sentence(ensembles: dict | None) -> str:
    """Pooled out-of-fold AUCs of larger averages of cross-validated networks."""
    larger = [f"{e['networks_per_image']} ({_seeds_spaced(name)}) "
              f"{fmt(e['pooled_auc'])}" for name, e in sorted(
                  (ensembles or {}).items(), key=lambda item: (item[1]["networks_per_image"],
                                                               item[0]))
              if e["networks_per_image"] > 2]
    return (" Networks averaged per image, more of them: " + "; ".join(larger) + "."
            if larger else "")


def _cv_auc_lines(cv: dict) -> list[str]:
    """The recipes' pooled out-of-fold AUCs, per fold, larger averages, and the ROC point at
    sensitivity 0.90."""
    seeds = list(cv["pooled_auc"])
    # the card's JSON is written with sorted keys: order the rows here, single networks first
    keys = sorted(cv["pooled_auc"][seeds[0]], key=lambda k: ("+" in k, k))
    names = {**cv["recipes"], **{k: " + ".join(k.split("+")) + ": the two networks' logits "
                                 "averaged, as the bundled graph does" for k in keys if "+" in k}}

    def cell(seed: str, key: str) -> str:
        row = cv["pooled_auc"][seed].get(key)
        return _value_ci(row) if row else ""

    lines = _table(["recipe", *(_seeds_spaced(s) for s in seeds), "what"],
                   [[k, *(cell(s, k) for s in seeds), names.get(k, "")] for k in keys])
    per_fold = ", ".join(f"fold {k} {fmt(v)}" for k, v in cv["per_fold_auc"][seeds[0]].items())
    specs = cv["specificity_at_sensitivity_0.90"]
    spec = " and ".join(f"{fmt(v)} ({_seeds_spaced(s)})" for s, v in specs.items())
    seed_pair = cv.get("seed_ensemble_auc")
    return lines + [
        f"A+B per fold ({_seeds_spaced(seeds[0])}): {per_fold}."
        + (f" Averaging the two seeds' networks gives A+B {_value_ci(seed_pair)}."
           if seed_pair else "")
        + _ensemble_sentence(cv.get("ensembles"))
        + f" On A+B's pooled out-of-fold ROC curve the specificity at sensitivity 0.90 is {spec}"
        + (": read image by image on BUS-BRA, this recipe does not reach sensitivity 0.90 with "
           "specificity 0.80, whatever the threshold." if max(specs.values()) < 0.80 else ".")
        + _cv_lesion_sentence(cv.get("lesion_reading")), ""]


def _cv_lesion_sentence(lesion: dict | None) -> str:
    """Rule X's lesion reading of the same out-of-fold scores."""
    if not lesion:
        return ""
    parts = [f"AUC {_value_ci(v['pooled_auc'])}, {_difference(v['minus_per_image'])} over the "
             f"per-image scores, with specificity {fmt(v['specificity_at_sensitivity_0.90'])} at "
             f"sensitivity 0.90 ({_seeds_spaced(s)})" for s, v in lesion.items()]
    return (" Read per lesion instead (rule X: each image scored by the mean of A+B over its "
            f"lesion's views), A+B reaches {'; and '.join(parts)}.")


def _cv_threshold_lines(cv: dict) -> list[str]:
    """How a threshold fitted for a sensitivity on part of a fold holds on the rest."""
    fit = cv["threshold_fit"]
    first = fit[0]
    lines = ["How well a threshold fitted for a sensitivity holds on other images: each fold's "
             f"A+B scores cut by patient, {first['fit_share']:.0%} (about the size of the "
             "validation set) to fit the threshold and the rest to score it, "
             f"{first['splits']} splits over the four folds "
             f"({_seeds_spaced(cv['threshold_fit_seed'])}). Fitted for "
             f"{fmt(first['target'], 2)}, as the product's threshold is, the sensitivity "
             f"elsewhere is {fmt(first['mean_sensitivity'])} on average and below 0.90 in "
             f"{first['share_below_0.90']:.0%} of the splits; a margin buys sensitivity with "
             "specificity:", ""]
    return lines + _table(["sensitivity fitted for", "mean sensitivity elsewhere",
                           "share below 0.90", "mean specificity elsewhere"],
                          [[fmt(m["target"], 2), fmt(m["mean_sensitivity"]),
                            fmt(m["share_below_0.90"], 2), fmt(m["mean_specificity"])]
                           for m in fit])


def _cv_triage_lines(triage: dict | None) -> list[str]:
    """Within BI-RADS 4: the AUC and the benign lesions cleared at high sensitivity."""
    if not triage:
        return []
    first = next(iter(triage.values()))
    rows = "; ".join(
        f"{_seeds_spaced(name)}: AUC {fmt(t['auc'])}{_ci(t, 'auc')}, "
        + ", ".join(f"{fmt(share)} at sensitivity {level}"
                    for level, share in t["benign_cleared_at_sensitivity"].items())
        for name, t in triage.items())
    return ["Within BI-RADS 4, where the radiologists recommended a biopsy "
            f"({first['n']} images, {first['n_malignant']} cancers): A+B's out-of-fold AUC, and "
            "the share of benign lesions that a threshold keeping most of the cancers would call "
            f"benign: {rows}. These are points of the out-of-fold ROC curve, not validated "
            "operating points: a biopsy-triage threshold would need its own.", ""]


def _cv_question_lines(cv: dict) -> list[str]:
    """The rules' recipe questions, one bullet each: the auxiliary targets, strong augmentation
    for two views, input resolution, a larger two-view backbone."""
    aux = cv["aux_gain"]
    items = [f"Auxiliary targets (rule T, C against B): A+C minus A+B {_difference(aux)} on "
             f"{_seeds_spaced(aux['decided_on'])}; gain shown: {'yes' if aux['gain'] else 'no'}."]
    if cv.get("strong_two_view"):
        strong = "; ".join(f"{_difference(g)} on {_seeds_spaced(s)}"
                           for s, g in cv["strong_two_view"].items())
        items.append(f"Strong augmentation for the two-view network (D+B minus A+B): {strong}; "
                     "rule P turned it down on the validation images alone.")
    res = cv.get("resolution")
    if res:
        each = ", ".join(f"{d:+.3f} against {_seeds_spaced(s)}"
                         for s, d in sorted(res["difference_to_each_seed"].items()))
        items.append(
            f"Input resolution (rule V: both networks at 288 pixels instead of 224, "
            f"{_seeds_spaced(res['decided_on'])}): E+F minus A+B {_difference(res)}; "
            f"{each}. Alone, E minus A {_difference(res['two_view_networks'])} and F minus B "
            f"{_difference(res['crop_networks'])}. Gain shown: {'yes' if res['gain'] else 'no'}.")
    w = cv.get("rule_w")
    if w:
        crop = "; ".join(f"{_difference(c)} on {_seeds_spaced(s)}"
                         for s, c in sorted(w["crop_288"].items()))
        g = w["two_view_lite2"]
        items.append(f"Rule W: the crop network at 288 pixels, F minus B, {crop}; replicated: "
                     f"{'yes' if w['crop_288_replicated'] else 'no'}. The two-view network on "
                     f"the lite2 backbone, G+B minus A+B on {_seeds_spaced(g['decided_on'])}: "
                     f"{_difference(g)}; gain shown: {'yes' if g['gain'] else 'no'}.")
    return ["Recipe questions (a gain needs at least +0.005 with the paired patient-bootstrap "
            "interval above 0):", "", *(f"- {item}" for item in items), ""]


def _cross_validation_lines(cv: dict | None) -> list[str]:
    """The bundled members' recipes cross-validated on folds 1-4 (studies/cross_validation.py)."""
    if not cv:
        return []
    intro = ("The test fold is one sample of images, and the validation images chose the "
             "members. To see what the members' recipes and their variants do beyond both, each "
             "recipe was trained four times for each seed shown (`--val-fold k`: on three of "
             "folds 1-4, the epoch kept by AUC on the fourth), "
             f"so that each of the {cv['n_images']} training-fold images ({cv['n_patients']} "
             "patients) is scored by networks that did not train on it: ground-truth crops, each "
             "network averaged with its mirror; fold 5 not read. These networks are not the "
             "bundled ones. Pooled out-of-fold ROC AUC with patient-bootstrap 95% CIs; source: "
             f"{cv['source']}.")
    return (["## Cross-validation of the recipes (folds 1-4)", "", intro, ""]
            + _cv_auc_lines(cv) + _cv_threshold_lines(cv)
            + _cv_triage_lines(cv.get("birads4_triage")) + _cv_question_lines(cv))


def _birads_lines(birads: dict) -> list[str]:
    """How the risk band relates to the radiologists' BI-RADS on the test fold."""
    if "spearman" not in birads:
        return []
    lines = ["Risk band against the radiologists' BI-RADS on the test fold: Spearman correlation "
             f"{fmt(birads.get('spearman'))} (full band order); on three levels (BI-RADS 2-3 "
             "with band 3, 4 with 4A/4B/4C, 5 with 5) exact agreement "
             f"{fmt(birads.get('exact_agreement_3level'))} and linearly weighted kappa "
             f"{fmt(birads.get('weighted_kappa_linear_3level'))}.", ""]
    table = birads.get("table") or {}
    if table.get("counts"):
        lines += _table(["band \\ BI-RADS", *(str(c) for c in table["cols_birads"])],
                        [[band, *row] for band, row in zip(table["rows_band"], table["counts"],
                                                            strict=True)])
    return lines


def _training_lines(section: dict) -> list[str]:
    train = section.get("training", {})
    if not train:
        return ["- training: not recorded"]
    out = []
    for key in ("command", "hardware", "wall_time_minutes", "epochs", "best_epoch", "loss",
                "seed"):
        if key in train:
            value = train[key]
            if key == "hardware":
                value = hardware_text(value)
            out.append(f"- {key.replace('_', ' ')}: `{value}`" if key == "command"
                       else f"- {key.replace('_', ' ')}: {value}")
    return out


def _run_note(training: dict) -> str:
    return f"; {training['note']}" if training.get("note") else ""


def _selection_lines(selection: dict | None, title: str = "Selection") -> list[str]:
    """The segmenter's validation comparison as a table, when the card holds one."""
    if not selection:
        return []
    dice = selection.get("val_dice_original_resolution") or {}
    post = selection.get("val_dice_postprocessed") or {}
    skipped = selection.get("not_eligible") or {}
    rows = [[name, fmt(value, 4), fmt(post.get(name), 4),
             "shipped" if name == selection.get("chosen") else skipped.get(name, "")]
            for name, value in dice.items()]
    return [f"{title} on {selection.get('split', 'validation')}: {selection.get('rule')}; "
            f"shipped: {selection.get('chosen')}", "",
            *_table(["candidate", "validation Dice", "postprocessed", ""], rows)]


def _sweep_lines(sweep: dict | None) -> list[str]:
    """The validation sweep of the segmenter's mask threshold, when the card holds one."""
    if not sweep:
        return []
    dice = ", ".join(f"{t}: {fmt(v, 4)}" for t, v in sweep.get("val_dice_by_threshold", {}).items())
    return [f"- mask threshold swept on {sweep.get('split', 'validation')} ({sweep.get('rule')}): "
            f"{dice}; served: {sweep.get('chosen')}"]


def _short_run_lines(what: str, comparison: dict | None) -> list[str]:
    """A loss or architecture comparison: short runs that differ in one thing."""
    if not comparison or not comparison.get("runs"):
        return []
    key = "loss" if what == "loss" else "architecture"
    rows = [[r.get(key), fmt(r.get("best_val_dice"), 4), r.get("epochs_run"), r.get("train_images"),
             fmt(r.get("minutes"), 1), f"`{r.get('command')}`"] for r in comparison["runs"]]
    return [f"{what.capitalize()} ({comparison.get('protocol')}); chosen: "
            f"{comparison.get('chosen_by_validation')}", "",
            *_table([key, "validation Dice", "epochs", "training images", "minutes", "command"], rows)]


def _segmenter_validation_lines(val: dict | None) -> list[str]:
    if not val or "dice" not in val:
        return []
    post = val.get("postprocessed") or {}
    lines = [f"Validation ({val.get('images')} images, patient-wise, test fold "
             f"{val.get('test_fold')} untouched), at original resolution:", ""]
    rows = [["raw mask (probability > " + fmt(val.get("threshold"), 2) + ")", _mean_sd(val["dice"]),
             _mean_sd(val.get("iou"))]]
    if post:
        rows.append([post.get("what", "postprocessed"), _mean_sd(post.get("dice")),
                     _mean_sd(post.get("iou"))])
    lines += _table(["mask", "Dice, mean ± sd", "IoU, mean ± sd"], rows)
    per = val.get("dice_per_scanner") or {}
    if per:
        iou = val.get("iou_per_scanner") or {}
        lines += _table(["scanner", "n", "Dice, mean ± sd", "IoU, mean ± sd"],
                        [[s, d.get("n"), _mean_sd(d), _mean_sd(iou.get(s))]
                         for s, d in sorted(per.items())])
    return lines


def _segmenter_choice_lines(seg: dict) -> list[str]:
    lines = _short_run_lines("loss", seg.get("loss_comparison"))
    lines += _short_run_lines("architecture", seg.get("architecture_comparison"))
    lines += _selection_lines(seg.get("selection"))
    for earlier in reversed(seg.get("selection_history") or []):
        lines += _selection_lines(earlier, "Earlier selection")
    extra = []
    tta = seg.get("tta_comparison")
    if tta:
        extra.append(f"- mirror averaging (horizontal flip), validation Dice "
                     f"{fmt((tta.get('without_tta') or {}).get('val_dice_mean'), 4)} without, "
                     f"{fmt((tta.get('with_hflip_tta') or {}).get('val_dice_mean'), 4)} with; "
                     f"used: {tta.get('chosen')} ({tta.get('protocol')})")
    ext = seg.get("extension_attempt")
    if ext:
        per_epoch = ", ".join(f"epoch {k}: {fmt(v, 4)}"
                              for k, v in (ext.get("val_dice_per_extra_epoch") or {}).items())
        extra.append(f"- longer training ({ext.get('what')}): best validation Dice "
                     f"{fmt(ext.get('best_val_dice_before'), 4)} before, "
                     f"{fmt(ext.get('best_val_dice_after'), 4)} after ({per_epoch}); kept: "
                     f"{'yes' if ext.get('kept') else 'no'}")
    sweep = _sweep_lines(seg.get("threshold_sweep"))
    extra += sweep
    return lines + extra + ([""] if extra else [])


def _segmenter_run_line(what: str, train: dict) -> str:
    return (f"- {what}: `{train.get('command')}`, {train.get('minutes')} min on "
            f"{hardware_text(train.get('hardware'))}, best validation Dice "
            f"{fmt(train.get('best_val_dice'))} at epoch {train.get('best_epoch')}"
            + _run_note(train))


def _segmenter_lines(seg: dict) -> list[str]:
    lines = ["### Segmenter (`segmenter.onnx`)", ""]
    facts = []
    if seg.get("architecture"):
        decoder = seg.get("decoder_channels")
        facts.append(f"- network: {seg['architecture']} ({seg.get('encoder', 'encoder n/a')}"
                     + (f"; decoder channels {'-'.join(str(c) for c in decoder)}" if decoder
                        else "") + ")")
    if seg.get("ensemble"):
        facts.append(f"- ensemble: {seg['ensemble']}")
    if seg.get("input_size"):
        facts.append(f"- input: {seg['input_size']}×{seg['input_size']} letterboxed grayscale; "
                     f"mask: probability > {fmt(seg.get('threshold', 0.5), 2)}, the largest "
                     "region kept, holes filled")
    if seg.get("onnx_megabytes") is not None:
        diff = seg.get("onnx_vs_torch_max_abs_diff")
        facts.append(f"- ONNX: {fmt(seg['onnx_megabytes'], 1)} MB"
                     + (f"; largest difference from torch on the export check {diff:.1e}"
                        if isinstance(diff, float) else ""))
    if seg.get("weights_storage") not in (None, "float32"):
        facts.append(f"- weights stored as {seg['weights_storage']} (computed in float32)")
    lines += facts + _training_lines(seg) + [""]
    lines += _segmenter_validation_lines(seg.get("validation"))
    lines += _segmenter_choice_lines(seg)
    runs = [_segmenter_run_line(f"member `{m.get('checkpoint')}` ({m.get('encoder')})",
                                m.get("training", {})) for m in seg.get("members") or []]
    runs += [_segmenter_run_line(f"candidate `{name}`, trained and not shipped "
                                 f"({run.get('why_not_compared') or 'see selection'})",
                                 run.get("training", {}))
             for name, run in (seg.get("candidate_runs") or {}).items()]
    if runs:
        lines += ["Training runs:", "", *runs, ""]
    return lines


def _option_rows(clf: dict) -> list[list]:
    """``"model=a, tta=none, contexts=0.3"`` keys into table rows (best first), with each
    option's network passes per image and the shipped one marked."""
    candidates = clf.get("candidates") or {}
    shipped_paths = set(clf.get("checkpoints") or [])
    shipped_contexts = ",".join(str(c) for c in (clf.get("crop") or {}).get("contexts") or [])
    rows = []
    for key, auc in sorted(clf["crop_comparison_val_auc"].items(), key=lambda kv: -kv[1]):
        parts = parse_option(key)
        model, tta = parts["model"], parts["tta"]
        contexts = parts.get("contexts", "")
        members = option_members(model, candidates)
        passes = (sum(candidates[m].get("passes_per_crop") or 0 for m in members)
                  * max(1, len([c for c in contexts.split(",") if c])) * TTA_COST.get(tta, 1.0))
        shipped = ({candidates[m].get("checkpoint") for m in members} == shipped_paths
                   and tta == clf.get("tta") and contexts == shipped_contexts)
        rows.append([model, tta, contexts, f"{passes:g}" if members else "n/a", fmt(auc, 4),
                     "shipped" if shipped else ""])
    return rows


def _metric_rows(results: dict) -> list[list]:
    return [[name, fmt(r.get("val_auc")), fmt(r.get("val_balanced_accuracy")),
             fmt(r.get("val_sensitivity")), fmt(r.get("val_specificity"))]
            for name, r in results.items() if isinstance(r, dict)]


def _member_selection_lines(selection: dict | None,
                            heading: str = "Ensemble members") -> list[str]:
    """Which networks make up the shipped ensemble: candidates scored on validation."""
    if not selection:
        return []
    passes = selection.get("passes_per_image") or {}
    rows = [[name, passes.get(name, "n/a"), fmt(auc, 4),
             "shipped" if name == selection.get("chosen") else ""]
            for name, auc in sorted((selection.get("val_auc") or {}).items(), key=lambda kv: -kv[1])]
    lines = [f"{heading}, chosen on {selection.get('split', 'validation')}: "
             f"{selection.get('rule')}.", "",
             *_table(["ensemble", "passes per image", "validation AUC", ""], rows)]
    for name, run in (selection.get("new_runs") or {}).items():
        auc = run.get("val_auc_training")
        soup = run.get("soup")
        made = (f"{soup.get('method')} weight average of {len(soup.get('kept') or [])} of "
                f"{len(soup.get('kept') or []) + len(soup.get('left_out') or [])} networks"
                if soup else f"best epoch {run.get('best_epoch')}")
        lines.append(f"- `{name}`: {made}"
                     + (f", validation AUC in training {fmt(auc, 4)}" if auc is not None else "")
                     + f", {fmt(run.get('wall_minutes'), 1)} min; `{run.get('command')}`")
    if selection.get("note"):
        lines.append(f"- {selection['note']}")
    return lines + ([""] if selection.get("new_runs") or selection.get("note") else [])


def _classifier_choice_lines(clf: dict) -> list[str]:
    lines = _member_selection_lines(clf.get("member_selection"))
    for earlier in reversed(clf.get("member_selection_history") or []):
        lines += _member_selection_lines(earlier, "Earlier round of members")
    if clf.get("crop_comparison_val_auc"):
        lines += [f"Options scored on validation; rule: {clf.get('option_rule')}.", "",
                  *_table(["model", "mirror averaging", "crop context", "passes per image",
                           "validation AUC", ""], _option_rows(clf))]
        if clf.get("option_note"):
            lines += [f"Why this option: {clf['option_note']}", ""]
    candidates = clf.get("candidates")
    if candidates:
        lines += ["Candidate networks:", "",
                  *_table(["candidate", "backbone", "input", "epoch", "passes per image",
                           "validation AUC in training"],
                          [[name, c.get("arch"), c.get("input"), c.get("epoch"),
                            c.get("passes_per_crop"), fmt(c.get("val_auc_training"))]
                           for name, c in candidates.items()])]
    tuned = clf.get("comparisons_finetuned_input")
    if tuned:
        lines += [f"- input, fine-tuned ({tuned.get('protocol')}): best validation AUC crop "
                  f"{fmt(tuned.get('crop_best_val_auc'))} (first {tuned.get('image_epochs')} "
                  f"epochs {fmt(tuned.get('crop_best_val_auc_first_8_epochs'))}), whole image "
                  f"{fmt(tuned.get('image_best_val_auc'))}", ""]
    frozen = clf.get("comparisons") or {}
    for key, title in (("input", "Input"), ("imbalance_on_crop_features", "Class imbalance")):
        if frozen.get(key):
            lines += [f"{title}, on frozen features ({frozen.get('protocol')}; "
                      f"{frozen.get('n_train')} training, {frozen.get('n_val')} validation images):",
                      "", *_table([key.split("_")[0], "validation AUC", "balanced accuracy",
                                   "sensitivity", "specificity"], _metric_rows(frozen[key]))]
    mirror = clf.get("mirror_comparison")
    if mirror:
        scores = ", ".join(f"{k} {fmt(v)}" for k, v in mirror.get("val_auc", {}).items())
        lines += [f"- mirror averaging, validation AUC: {scores}; shipped: "
                  f"{mirror.get('chosen')} ({mirror.get('rule')}; {mirror.get('budget')})", ""]
    resnet = clf.get("resnet50_recipe")
    if resnet:
        lines += [f"- the original ResNet50 recipe: {resnet.get('status')}; frozen: "
                  f"{resnet.get('frozen')}; weights: {resnet.get('weights')}, validation AUC "
                  f"{fmt(resnet.get('val_auc_random_init'))} after {resnet.get('epochs_run')} "
                  f"epoch of {resnet.get('batches_per_epoch')} batches; `{resnet.get('command')}`",
                  ""]
    return lines


def _count_ci(cal: dict, hits: str, total: str) -> str:
    """The count and its Wilson interval, as in ``(68/75; 95% CI 0.82-0.95, Wilson)``; empty for
    cards calibrated before the counts were recorded, which hold only the rate."""
    k, n = cal.get(hits), cal.get(total)
    if not isinstance(k, int) or not isinstance(n, int) or n <= 0:
        return ""
    lo, hi = wilson_interval(k, n)
    return f" ({k}/{n}; 95% CI {fmt(lo, 2)}-{fmt(hi, 2)}, Wilson)"


def _calibration_lines(clf: dict) -> list[str]:
    cal = clf.get("calibration") or {}
    if "val_auc" not in cal:
        return []
    lines = [f"Calibration and operating point, on validation ({cal.get('n_val')} images, "
             f"{cal.get('masks', 'predicted')} masks, {cal.get('engine', 'onnxruntime')}): "
             f"{cal.get('method')}; threshold rule: {clf.get('threshold_rule', 'n/a')}.", ""]
    lines += _table(["validation", "value"], [
        ["ROC AUC", fmt(cal.get("val_auc"))],
        ["ECE before / after", f"{fmt(cal.get('val_ece_before'))} / {fmt(cal.get('val_ece_after'))}"],
        ["log loss before / after", f"{fmt(cal.get('val_nll_before'))} / "
                                    f"{fmt(cal.get('val_nll_after'))}"],
        ["sensitivity at the threshold",
         fmt(cal.get("val_sensitivity")) + _count_ci(cal, "val_cancers_called", "val_cancers")],
        ["specificity at the threshold",
         fmt(cal.get("val_specificity")) + _count_ci(cal, "val_benign_cleared", "val_benign")],
    ])
    if cal.get("command"):
        lines += [f"- command: `{cal['command']}`", ""]
    return lines


def _classifier_lines(clf: dict) -> list[str]:
    lines = ["### Classifier (`classifier.onnx`)", ""]
    facts = []
    if clf.get("backbone"):
        facts.append(f"- network: {clf['backbone']}, ImageNet-pretrained; head: global average "
                     "pooling and one linear layer")
    if clf.get("ensemble"):
        facts.append(f"- ensemble: {clf['ensemble']}")
    if clf.get("input"):
        crop = clf.get("crop") or {}
        what = {"both": "the lesion crop and the whole image", "crop": "the lesion crop",
                "image": "the whole image"}.get(clf["input"], clf["input"])
        shape = ""
        if crop and clf["input"] != "image":
            shape = (f"; crop: a square around the mask's box, {fmt(crop.get('context'), 2)} of "
                     f"its longer side added on every side, resized to "
                     f"{crop.get('size')}×{crop.get('size')}")
        facts.append(f"- input: {what}{shape}")
    if clf.get("weights_storage"):
        facts.append(f"- weights stored as {clf['weights_storage']}")
    if clf.get("temperature") is not None:
        facts.append(f"- temperature {fmt(clf['temperature'], 4)}, threshold "
                     f"{fmt(clf.get('threshold'), 4)} (calibrated probability)")
    if clf.get("cam"):
        facts.append(f"- heatmap: class activation map, {clf['cam']}")
    lines += facts + _training_lines(clf) + [""]
    lines += _calibration_lines(clf)
    lines += _classifier_choice_lines(clf)
    members = []
    for member in clf.get("members") or []:
        train = member.get("training") or {}
        epoch = ("weight average" if member.get("epoch") is None and train.get("soup")
                 else f"epoch {member.get('epoch')}")
        members.append(f"- member `{member.get('checkpoint')}` ({member.get('arch')}, input "
                       f"{member.get('config', {}).get('input', 'crop')}, {epoch}, "
                       f"validation AUC in training "
                       f"{fmt(member.get('val_auc_training'))})"
                       + (f": `{train['command']}`, {train.get('wall_minutes')} min on "
                          f"{hardware_text(train.get('hardware'))}" + _run_note(train)
                          if train.get("command") else ""))
        members += _soup_lines(train.get("soup"))
    if members:
        lines += ["Training runs:", "", *members, ""]
    return lines


def _soup_lines(soup: dict | None) -> list[str]:
    """A weight-averaged member's ingredients, each with the run that trained it."""
    if not soup:
        return []
    kept = sum(bool(i.get("kept")) for i in soup.get("ingredients", []))
    lines = [f"  - a {soup.get('method')} weight average (model soup) of {kept} "
             f"network{'s' if kept != 1 else ''}, batch norms folded first; validation AUC "
             f"{fmt(soup.get('val_auc'), 4)} "
             f"({soup.get('validation_crops', 'ground-truth crops')}):"]
    for ing in soup.get("ingredients", []):
        run = ing.get("training") or {}
        tried = (f", soup with it {fmt(ing['soup_val_auc'], 4)}"
                 if ing.get("soup_val_auc") is not None else "")
        lines.append(f"    - {'kept' if ing.get('kept') else 'left out'}: "
                     f"`{ing.get('checkpoint')}` (validation AUC in training "
                     f"{fmt(ing.get('val_auc_training'), 4)}{tried})"
                     + (f": `{run['command']}`" if run.get("command") else ""))
    return lines


def _input_limit(kind: str) -> str:
    if kind == "both":
        return ("The classifier sees a crop around the lesion and, beside it, the whole image, "
                "text included; the malignant share differs between BUS-BRA's scanners, so part "
                "of what it learnt from the whole image may be the scanner.")
    if kind == "image":
        return "The classifier sees the whole image, text included."
    return ("The classifier sees a crop around the lesion, which removes most of the text, but "
            "not all of it.")


def _input_check_lines(check: dict | None) -> list[str]:
    if not check or not check.get("ranges"):
        return []
    val, test = check.get("validation", {}), check.get("test", {})
    rows = [[name, (check.get("statistics") or {}).get(name, ""), fmt(lo, 4), fmt(hi, 4)]
            for name, (lo, hi) in check["ranges"].items()]
    return [
        "## Images unlike the training images",
        "",
        "Every analysis compares three statistics of the image's scan area with ranges fitted "
        f"on the training images ({check.get('rule', '')}); an image outside a range gets a "
        "warning, never a refusal, since the robustness study shows that such changes move the "
        "calls at the frozen threshold.",
        "",
        *_table(["statistic", "what", "low", "high"], rows),
        f"BUS-BRA images outside a range: {val.get('unusual')} of {val.get('n')} validation "
        f"images and {test.get('unusual')} of {test.get('n')} test images. "
        f"Written by `{check.get('command', 'busdx evaluate input-check')}`.",
        "",
        *_colour_lines(),
    ]


def _colour_lines() -> list[str]:
    from busdx.inference.quality import CHROMA, COLOUR_SHARE, SATURATION

    return [
        "A fourth check needs no range: every training image is grey B-mode, so colour painted "
        "over the scan (a colour or power Doppler box, an elastography map) reaches the "
        "networks as grey tissue. A scan with more than "
        f"{100 * COLOUR_SHARE:g}% of its pixels in saturated colour (channels apart by more "
        f"than {CHROMA:g} of the full scale and {SATURATION:g} of the brightest) gets a warning; "
        "a grey image stored as colour or a pale tinted grey map does not. Thin colour (flow) "
        "is also filled in from the grey around it before the analysis, which gives back part "
        "of what it costs; solid colour (an elastography map) is not (rule Y, "
        "`docs/selection_rules.md`). `studies/colour_overlays.py` measures both.",
        "",
    ]


def _presence_lines(seg: dict) -> list[str]:
    """The presence check's rule and selection scores (evidence segmenter.presence)."""
    record = seg.get("presence") or {}
    if seg.get("presence_threshold") is None or not record.get("selection"):
        return []
    names = {"busbra_validation": "BUS-BRA validation patients (never fitted on)",
             "breast_dev_out_of_fold": "BrEaST-Lesions-USG development half, out of fold"}

    def share(d: dict) -> str:
        return f"{d['hits']} of {d['n']}" if d.get("n") else "none"

    rows = [[names.get(name, name), share(r["check_and_outline"]["no_lesion"]),
             share(r["check_and_outline"]["found"]), share(r["outline"]["no_lesion"])]
            for name, r in record["selection"].items()]
    return [
        "## Does the image show a lesion at all?",
        "",
        "The outline network learnt from lesion images only. A presence check on what one run "
        f"of it gives ({record.get('rule', '')}) reports \"no lesion\" below a logit of "
        f"{fmt(seg['presence_threshold'], 3)}, whatever the outline. It was fixed by "
        "[a plan written before it was fitted](generalisation_plan.md) and judged on selection "
        "data only (below); the test results are in the results table.",
        "",
        *_table(["selection data", "lesion-free images reported \"no lesion\"",
                 "lesion images still found", "\"no lesion\" by the outline alone"], rows),
        f"Written by `{record.get('command', 'busdx evaluate presence')}`.",
        "",
    ]


def render_history(card: dict) -> str:
    """The long record of how the bundled models were made and chosen (docs/model_history.md),
    from the card view of the release and all its evidence."""
    seg, clf = card.get("segmenter", {}), card.get("classifier", {})
    lines = [
        "# How the bundled models were made and chosen",
        "",
        "_Written by `busdx release` from `models/release.json` and every record in "
        "`evidence/`, earlier rounds included; do not edit by hand. The model card "
        "(`models/MODEL_CARD.md`) is the short version. Rules named by a letter (rule X, ...) "
        "are stated, with the reasons for them, in [selection_rules.md](selection_rules.md); "
        "`runs/...` names the training run a checkpoint came from; `DATA` stands for the "
        "dataset's folder._",
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
    lines += _site_lines(clf.get("site_calibration"))
    lines += _gt_mask_lines(clf)
    lines += _lesion_reading_lines(clf)
    seg_test = seg.get("test", {})
    if seg_test.get("dice_per_scanner"):
        lines += ["Segmentation Dice per scanner:", "",
                  *_table(["scanner", "n", "mean", "sd"],
                          [[scanner, d.get("n"), fmt(d.get("mean")), fmt(d.get("std"))]
                           for scanner, d in sorted(seg_test["dice_per_scanner"].items())])]
    lines += _per_scanner_lines(clf.get("test", {}))
    lines += _birads_lines(clf.get("test", {}).get("birads") or {})
    lines += _reader_lines(clf.get("test", {}))
    lines += _cross_validation_lines(clf.get("recipe_cross_validation"))
    lines += ["## Models", "", *_segmenter_lines(seg), *_classifier_lines(clf)]
    lines += _input_check_lines(card.get("input_check"))
    lines += _presence_lines(seg)
    lines += [
        "## Limits",
        "",
        "- Trained and tested on one hospital's images (BUS-BRA, Brazil) and four scanners; "
        "performance on other hospitals, scanners, presets and populations is unknown and is "
        "expected to be lower. Validate locally before any use: `busdx evaluate external "
        "--data DIR --out OUT` scores the models, as served, on your own labelled images, and "
        "`--recalibrate DIR` also writes a copy whose probability and threshold are refitted "
        "on them, with the operating point's sensitivity estimated out of fold.",
        "- Every BUS-BRA image carries burned-in scanner text and some carry caliper marks: a "
        "model can learn such shortcuts. " + _input_limit(clf.get("input", "crop")),
        "- One lesion per image is assumed; the largest predicted region is analysed.",
        "- Grey B-mode only: colour Doppler, power Doppler and elastography are not read. Colour "
        "over the scan is warned, thin flow filled in from the grey around it and solid colour "
        "analysed as grey; analyse the plain B-mode image. A cine loop is read at one frame "
        "(the first unless another is chosen).",
        "- The risk band maps the calibrated probability onto BI-RADS likelihood ranges. It is an "
        "aid to reading the probability, not a BI-RADS assessment, which also weighs the "
        "clinical context.",
        "- The calibration and the threshold were fitted on BUS-BRA validation patients; "
        "a different population shifts both." if not clf.get("site_calibration") else
        f"- The calibration and the threshold were refitted on "
        f"{clf['site_calibration'].get('n')} images of one site; they hold for images like "
        "those, not for other sites, scanners or settings.",
        "- Not a medical device; not cleared or approved by any regulator.",
        "",
    ]
    return "\n".join(lines)
