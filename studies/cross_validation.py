"""Rule T: 4-fold cross-validation of the shipped classifier recipes on BUS-BRA's training folds.

Every model choice before rule T was made on the same 226 validation images, where one AUC has a
standard error of about 0.013. Here each image of folds 1-4 is
scored by networks that did not train on it: for k = 1..4, each recipe is trained on the other
three folds with ``--val-fold k`` (fold 5, the test fold, is never read) and scores fold k on its
ground-truth crop, averaged with its mirror as the shipped graph does. Four recipes, two seeds:

- A: the shipped two-view recipe (lite1, crop + whole image);
- B: the shipped crop recipe (lite2, strong augmentation);
- C: B with the auxiliary histology and BI-RADS targets (``--aux-weight 0.3``, rule S);
- D: A with strong augmentation (rule P's rejected option; the rule's second addendum).

Later rules add recipes scored the same way: rule V's E and F (A and B at 288 pixels, seed 0)
and rule W's G (A on the lite2 backbone, seed 0) with F's seed-1 replication. Rule X reads the
same A+B scores per lesion: each image scored by the mean over its lesion's views.

The runs were made on an H200 (``studies/cv_device/``); their out-of-fold logits are kept in
``reports/studies/cross_validation_oof.json``. From those this script answers the rule's three
questions (``docs/selection_rules.md``, rule T) into ``reports/studies/cross_validation.json``:

1. do the auxiliary targets help (pair A+C against A+B, paired patient bootstrap)?
2. the recipes' cross-validated AUC, pooled over the out-of-fold images and per fold (and, per
   the second addendum, D against A);
3. how far a threshold fitted for sensitivity >= 0.90 on one set of about 370 images misses on
   other images, both as the rule fixed it (fold j's threshold on the other three folds, whose
   scores come from other networks) and within one network (repeated patient-wise splits of its
   fold into a 60% fitting part, about the size of the product's validation set, and the rest).

    python studies/cross_validation.py collect --data ../shared/data/busbra \\
        --runs runs/cls/cv27/cv_seed0.json runs/cls/cv27/cv_seed1.json runs/cls/cv27/cv_strong.json \\
               runs/cls/v28/cv.json runs/cls/w28/cv.json
    python studies/cross_validation.py analyse --models models   # + the model card's summary
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from busdx.evaluation.classification import binary_metrics, bootstrap_cis, roc_auc
from busdx.inference.lesion import group_means
from busdx.training.calibration import sensitivity_threshold

log = logging.getLogger("cross_validation")

OOF_FILE = "cross_validation_oof.json"
RESULT_FILE = "cross_validation.json"
FIGURE_FILE = "cross_validation.png"
RECIPES = ("A", "B", "C", "D")  # rule T's; E and F are rule V's
FOLDS = (1, 2, 3, 4)
PAIRS = {"A+B": ("A", "B"), "A+C": ("A", "C"), "D+B": ("D", "B"), "E+F": ("E", "F"),
         "G+B": ("G", "B")}
# each rule's question: named comparisons (baseline, candidate) of scores, asked of a seed whose
# runs include them
QUESTIONS = {
    "aux_gain": {"pairs": ("A+B", "A+C"), "crop_networks": ("B", "C")},  # rule T
    "strong_two_view": {"pairs": ("A+B", "D+B"), "two_view_networks": ("A", "D")},  # addendum 2
    "resolution": {"pairs": ("A+B", "E+F"), "two_view_networks": ("A", "E"),  # rule V: 288 px
                   "crop_networks": ("B", "F")},
    "two_view_lite2": {"pairs": ("A+B", "G+B"), "two_view_networks": ("A", "G")},  # rule W
}
TARGET_SENSITIVITY = 0.90
MIN_GAIN = 0.005  # rule T, question 1
REPS = 2000
SPLITS = 200  # question 3, within-network splits per fold
FIT_SHARE = 0.6
MARGIN_TARGETS = (0.92, 0.94, 0.96)
TRIAGE_SENSITIVITIES = (0.95, 0.98)  # among BI-RADS 4 cancers: a biopsy triage must miss few
SEED = 0
COMMAND = ("busdx train classification --data ../shared/data/busbra --val-fold {k} --seed {seed} "
           "--no-export --device cuda --workers 2 --threads 1 --max-minutes 6.5 "
           "--imbalance weighted --epochs 12 --batch-size 24 --lr 1e-3 --backbone-lr 3e-4 "
           "--patience 5 --jitter 0.25 {recipe}")
RECIPE_FLAGS = {"A": "--arch lite1 --input both",
                "B": "--arch lite2 --input crop --augment strong",
                "C": "--arch lite2 --input crop --augment strong --aux-weight 0.3",
                "D": "--arch lite1 --input both --augment strong",
                "E": "--arch lite1 --input both --size 288",
                "F": "--arch lite2 --input crop --augment strong --size 288",
                "G": "--arch lite2 --input both"}


# ---------------------------------------------------------------------------- collect


def collect(data: str, runs: list[str]) -> dict:
    """The device's run records (``studies/cv_device/run.py``; each file holds some runs),
    joined with the index's patients and folds, as one compact record of out-of-fold logits per
    seed and recipe."""
    from busdx.data.index import load_index

    by_id = load_index(data).by_id()
    images: dict[str, dict] = {}
    seeds: dict[str, dict] = {}
    for path in runs:
        record = json.loads(Path(path).read_text())
        failed = {n: rc for n, rc in record["status"].items() if rc != 0}
        if failed:
            raise SystemExit(f"{path}: runs failed: {failed}")
        for run in record["runs"]:
            if run["name"][1] == "v":  # trained on the bundled split: not out of fold
                log.info("%s: %s is a bundled-split run, left out", path, run["name"])
                continue
            recipe, k, seed = run["name"][0], int(run["name"][1]), run["config"]["seed"]
            s = seeds.setdefault(f"seed{seed}", {"runs": {}, "logits": {}})
            logits = s["logits"].setdefault(recipe, {})
            for image_id, label, z in zip(run["ids"], run["labels"], run["logits_mirror"],
                                          strict=True):
                r = by_id[image_id]
                if r.fold != k or r.label != label:
                    raise SystemExit(f"{image_id}: fold or label disagree with the index")
                images[image_id] = {"patient": r.patient, "label": r.label, "fold": r.fold,
                                    "birads": r.birads}
                logits[image_id] = round(float(z), 5)
            s["runs"][f"{recipe}{k}"] = {
                "command": COMMAND.format(k=k, seed=seed, recipe=RECIPE_FLAGS[recipe]),
                "best_epoch": run["best_epoch"], "epochs_run": len(run["history"]),
                "val_auc_training": run["best_val_auc"],
                "wall_minutes": round(run["wall_minutes"], 2),
                "device": run["gpu"] or run["device"], "torch": run["torch"],
            }
    ids = sorted(images)
    for name, s in seeds.items():
        for recipe, logits in s["logits"].items():
            if len(logits) != len(ids):
                raise SystemExit(f"{name} {recipe}: {len(logits)} of {len(ids)} images scored")
    return {
        "note": "out-of-fold logits on ground-truth crops, each network averaged with its mirror; "
                "images carried to the GPU as WebP (quality 90), ImageNet weights as float16",
        "images": {"id": ids, **{key: [images[i][key] for i in ids]
                                 for key in ("patient", "label", "fold", "birads")}},
        "seeds": {name: {"runs": dict(sorted(s["runs"].items())),
                         "logits": {r: [s["logits"][r][i] for i in ids]
                                    for r in sorted(s["logits"])}}
                  for name, s in sorted(seeds.items())},
    }


# ---------------------------------------------------------------------------- analyse


def _sens_spec(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    m = binary_metrics(labels, scores >= threshold)
    return m.recall, m.specificity


def specificity_at(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Specificity at the most specific threshold that keeps sensitivity >= target on these
    very scores (a point of their ROC curve, not an operating point)."""
    return _sens_spec(labels, scores, sensitivity_threshold(scores, labels, target))[1]


def auc_summary(labels, scores, patients, folds, reps: int) -> dict:
    ci = bootstrap_cis(labels, scores, patients, {"auc": roc_auc}, reps=reps, seed=SEED)["auc"]
    per_fold = {str(k): roc_auc(labels[folds == k], scores[folds == k]) for k in FOLDS}
    return {
        "pooled_auc": roc_auc(labels, scores), "pooled_auc_ci95": list(ci),
        "per_fold_auc": per_fold, "mean_fold_auc": float(np.mean(list(per_fold.values()))),
        "pooled_specificity_at_sensitivity_0.90": specificity_at(labels, scores,
                                                                  TARGET_SENSITIVITY),
    }


def compare_pairs(labels, first, second, patients, reps: int) -> dict:
    """AUC of ``second`` minus ``first`` with a paired patient-bootstrap interval."""
    scores = np.column_stack([first, second])
    statistic = {"difference": lambda y, s: roc_auc(y, s[:, 1]) - roc_auc(y, s[:, 0])}
    ci = bootstrap_cis(labels, scores, patients, statistic, reps=reps, seed=SEED)["difference"]
    return {"difference": statistic["difference"](labels, scores), "difference_ci95": list(ci)}


def threshold_transfer(labels, scores, folds) -> dict:
    """Rule T's question 3 as fixed: fold j's threshold (sensitivity >= 0.90 on fold j) applied
    to the other three folds."""
    rows = {}
    for j in FOLDS:
        fit = folds == j
        t = sensitivity_threshold(scores[fit], labels[fit], TARGET_SENSITIVITY)
        sens, spec = _sens_spec(labels[~fit], scores[~fit], t)
        rows[str(j)] = {"sensitivity_elsewhere": sens, "specificity_elsewhere": spec}
    return {"per_fold": rows,
            "mean_sensitivity": float(np.mean([r["sensitivity_elsewhere"] for r in rows.values()])),
            "mean_specificity": float(np.mean([r["specificity_elsewhere"] for r in rows.values()]))}


def threshold_within(labels, scores, patients, folds, splits: int,
                     target: float = TARGET_SENSITIVITY) -> dict:
    """Within one network: its fold cut by patient into a fitting part (FIT_SHARE) and the rest,
    ``splits`` times per fold; the sensitivity and specificity that a threshold fitted for
    ``target`` on the fitting part reaches on the rest."""
    rng = np.random.default_rng(SEED)
    sens, spec = [], []
    for k in FOLDS:
        idx = np.flatnonzero(folds == k)
        people = np.unique(patients[idx])
        for _ in range(splits):
            chosen = set(rng.choice(people, int(round(FIT_SHARE * len(people))), replace=False))
            fit = np.array([patients[i] in chosen for i in idx])
            a, b = idx[fit], idx[~fit]
            if labels[a].min() == labels[a].max() or labels[b].min() == labels[b].max():
                continue
            t = sensitivity_threshold(scores[a], labels[a], target)
            s, p = _sens_spec(labels[b], scores[b], t)
            sens.append(s)
            spec.append(p)
    sens, spec = np.array(sens), np.array(spec)
    return {"splits": len(sens), "fit_share": FIT_SHARE, "target": target,
            "mean_sensitivity": float(sens.mean()),
            "sensitivity_quantiles_5_50_95": [float(q) for q in np.quantile(sens, [.05, .5, .95])],
            "share_below_0.90": float((sens < TARGET_SENSITIVITY).mean()),
            "mean_specificity": float(spec.mean())}


def birads4_triage(labels, scores, patients, birads, reps: int) -> dict:
    """Within BI-RADS 4, where a biopsy is recommended: how well the scores rank, and the share
    of benign lesions a threshold keeping most cancers would call benign (points of the pooled
    ROC curve, not validated operating points)."""
    keep = birads == 4
    y, z = labels[keep], scores[keep]
    ci = bootstrap_cis(y, z, patients[keep], {"auc": roc_auc}, reps=reps, seed=SEED)["auc"]
    return {"n": int(keep.sum()), "n_malignant": int(y.sum()), "auc": roc_auc(y, z),
            "auc_ci95": list(ci),
            "benign_cleared_at_sensitivity": {str(t): specificity_at(y, z, t)
                                              for t in TRIAGE_SENSITIVITIES}}


def analyse(oof: dict, reps: int = REPS, splits: int = SPLITS) -> dict:
    img = oof["images"]
    labels = np.asarray(img["label"], dtype=int)
    patients = np.asarray(img["patient"])
    folds = np.asarray(img["fold"], dtype=int)
    out: dict = {"n_images": len(labels), "n_patients": len(set(img["patient"])),
                 "n_malignant": int(labels.sum()), "seeds": {}}
    for name, s in oof["seeds"].items():
        z = {r: np.asarray(v, dtype=np.float64) for r, v in s["logits"].items()}
        for pair, (a, b) in PAIRS.items():
            if a in z and b in z:
                z[pair] = (z[a] + z[b]) / 2
        row = {"auc": {key: auc_summary(labels, v, patients, folds, reps) for key, v in z.items()}}
        for question, comparisons in QUESTIONS.items():
            if all(key in z for pair in comparisons.values() for key in pair):
                row[question] = {name: compare_pairs(labels, z[a], z[b], patients, reps)
                                 for name, (a, b) in comparisons.items()}
        if "F" in z:  # rule W, question 1: the crop network at 288 pixels, each seed
            row["crop_288"] = compare_pairs(labels, z["B"], z["F"], patients, reps)
        if "A+B" in z:
            # rule X: each image scored by the mean over its lesion's views (a BUS-BRA case is
            # one lesion), beside the per-image scores it is compared with
            lesion = group_means(z["A+B"], patients)
            row["lesion_reading"] = {
                "auc": auc_summary(labels, lesion, patients, folds, reps),
                "minus_per_image": compare_pairs(labels, z["A+B"], lesion, patients, reps)}
            row["threshold_transfer"] = threshold_transfer(labels, z["A+B"], folds)
            row["threshold_within"] = threshold_within(labels, z["A+B"], patients, folds, splits)
            # the price of a margin: fitting for a higher sensitivity than the one wanted
            row["threshold_margins"] = [
                threshold_within(labels, z["A+B"], patients, folds, splits, target)
                for target in MARGIN_TARGETS]
            if "birads" in img:
                row["birads4_triage"] = birads4_triage(
                    labels, z["A+B"], patients, np.asarray(img["birads"], dtype=int), reps)
        out["seeds"][name] = row
    names = list(oof["seeds"])
    if len(names) > 1:  # the seeds' networks averaged per fold: what a seed ensemble adds
        z = {r: np.mean([oof["seeds"][n]["logits"][r] for n in names], axis=0) for r in "AB"}
        ab = (z["A"] + z["B"]) / 2
        out["seed_ensemble"] = {"seeds": names,
                                "A+B": auc_summary(labels, ab, patients, folds, reps)}
    # how far averaging more networks goes: every recipe of one seed, then of all seeds (rule
    # T's recipes, so that later rules' networks leave its record as it was)
    members = {f"all recipes, {n}": [oof["seeds"][n]["logits"][r] for r in RECIPES]
               for n in names}
    members["all recipes, all seeds"] = [oof["seeds"][n]["logits"][r] for n in names
                                         for r in RECIPES]
    out["ensembles"] = {name: {"networks_per_image": len(m),
                               "pooled_auc": roc_auc(labels, np.mean(m, axis=0))}
                        for name, m in members.items()}
    first = out["seeds"][names[0]]["aux_gain"]["pairs"]
    replicated = all(np.sign(out["seeds"][n]["aux_gain"]["pairs"]["difference"])
                     == np.sign(first["difference"]) for n in names[1:])
    gain = first["difference"] >= MIN_GAIN and first["difference_ci95"][0] > 0
    out["question_1"] = {
        "rule": f"A+C beats A+B by >= {MIN_GAIN} pooled out-of-fold AUC on {names[0]} with the "
                "paired interval above 0; later seeds must agree in sign",
        "gain": bool(gain and replicated), "decided_on": names[0],
        "difference": first["difference"], "difference_ci95": first["difference_ci95"],
        "same_sign_on_other_seeds": bool(replicated),
    }
    if "resolution" in out["seeds"][names[0]]:
        out["rule_v"] = rule_v(out, names)
    if "two_view_lite2" in out["seeds"][names[0]]:
        out["rule_w"] = rule_w(out, names)
    return out


def pair_decision(out: dict, names: list[str], question: str, pair: str) -> dict:
    """Rules V and W's test of a new pair against A+B: at least MIN_GAIN on the first seed
    with the paired interval above 0, and at least MIN_GAIN against every seed's A+B, so that
    one seed's luck does not decide."""
    first = out["seeds"][names[0]]
    pairs = first[question]["pairs"]
    auc = first["auc"][pair]["pooled_auc"]
    to_each = {n: auc - out["seeds"][n]["auc"]["A+B"]["pooled_auc"] for n in names}
    gain = (pairs["difference"] >= MIN_GAIN and pairs["difference_ci95"][0] > 0
            and all(d >= MIN_GAIN for d in to_each.values()))
    return {"gain": bool(gain), "decided_on": names[0], "difference": pairs["difference"],
            "difference_ci95": pairs["difference_ci95"], "difference_to_each_seed": to_each}


def rule_v(out: dict, names: list[str]) -> dict:
    """Rule V: does the pair at 288 pixels (E+F) beat A+B?"""
    first = out["seeds"][names[0]]
    return {"rule": f"E+F (288 pixels) beats A+B by >= {MIN_GAIN} pooled out-of-fold AUC on "
                    f"{names[0]} with the paired interval above 0, and by >= {MIN_GAIN} "
                    "against every seed's A+B",
            **pair_decision(out, names, "resolution", "E+F"),
            "two_view_networks": first["resolution"]["two_view_networks"],
            "crop_networks": first["resolution"]["crop_networks"]}


def rule_w(out: dict, names: list[str]) -> dict:
    """Rule W: is the crop network's gain at 288 pixels replicated on the other seeds, and does
    a lite2 two-view network gain (rule V's conditions, with G+B in place of E+F)?"""
    crop = {n: out["seeds"][n]["crop_288"] for n in names if "crop_288" in out["seeds"][n]}
    first = out["seeds"][names[0]]
    return {"crop_288": crop,
            "crop_288_replicated": all(c["difference"] >= MIN_GAIN for c in crop.values()),
            "two_view_lite2": {**pair_decision(out, names, "two_view_lite2", "G+B"),
                               "two_view_networks": first["two_view_lite2"]
                               ["two_view_networks"]}}


# ---------------------------------------------------------------------------- figure


def plot(oof: dict, result: dict, path: Path) -> Path:
    """Left: the out-of-fold ROC curves of A, B and A+B (each seed) and rule V's E+F, with the
    operating-point
    target (sensitivity 0.90 with specificity 0.80) marked. Right: the sensitivity reached on
    held-out images against the one a threshold was fitted for, with the specificity it costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from busdx.evaluation.classification import roc_curve

    labels = np.asarray(oof["images"]["label"], dtype=int)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {"A": ":", "B": "--", "A+B": "-"}
    for (name, s), colour in zip(oof["seeds"].items(), ("tab:blue", "tab:orange"), strict=False):
        z = {r: np.asarray(v) for r, v in s["logits"].items()}
        z["A+B"] = (z["A"] + z["B"]) / 2
        for key, style in styles.items():
            fpr, tpr = roc_curve(labels, z[key])
            auc = result["seeds"][name]["auc"][key]["pooled_auc"]
            left.plot(fpr, tpr, style, color=colour, lw=1.4 if key == "A+B" else 1,
                      label=f"{key}, {name.replace('seed', 'seed ')} (AUC {auc:.3f})")
    first, s = next(iter(oof["seeds"].items()))
    if "E" in s["logits"] and "F" in s["logits"]:  # rule V's pair, at 288 pixels
        fpr, tpr = roc_curve(labels, (np.asarray(s["logits"]["E"]) + s["logits"]["F"]) / 2)
        auc = result["seeds"][first]["auc"]["E+F"]["pooled_auc"]
        left.plot(fpr, tpr, "-", color="tab:green", lw=1.2,
                  label=f"E+F (288 px), {first.replace('seed', 'seed ')} (AUC {auc:.3f})")
    left.plot([0.20], [TARGET_SENSITIVITY], "k*", ms=12, label="target: sens 0.90, spec 0.80")
    left.fill_between([0, 0.20], TARGET_SENSITIVITY, 1.0, color="0.9", zorder=0,
                      label="meets both targets")
    left.set(xlim=(0, 0.6), ylim=(0.5, 1.0), xlabel="1 - specificity", ylabel="sensitivity",
             title=f"Out-of-fold ROC, folds 1-4 ({len(labels)} images, ground-truth crops)")
    left.legend(fontsize=7, loc="lower right")
    for (name, s), colour in zip(result["seeds"].items(), ("tab:blue", "tab:orange"),
                                 strict=False):
        rows = [s["threshold_within"], *s["threshold_margins"]]
        target = [m["target"] for m in rows]
        right.plot(target, [m["mean_sensitivity"] for m in rows], "o-", color=colour,
                   label=f"sensitivity elsewhere, {name.replace('seed', 'seed ')}")
        right.plot(target, [m["mean_specificity"] for m in rows], "s--", color=colour,
                   label=f"specificity elsewhere, {name.replace('seed', 'seed ')}")
    right.axhline(TARGET_SENSITIVITY, color="k", lw=0.8)
    right.axhline(0.80, color="0.5", lw=0.8, ls=":")
    right.set(xlabel="sensitivity the threshold was fitted for (on 60% of a fold)",
              ylabel="mean on the fold's other 40%", ylim=(0.5, 1.0),
              title="A+B: a threshold's sensitivity on other images")
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- model card

RECIPE_NAMES = {
    "A": "two-view lite1 (the bundled two-view member's recipe)",
    "B": "crop lite2, strong augmentation (the bundled crop member's recipe)",
    "C": "B with the auxiliary histology and BI-RADS targets (--aux-weight 0.3)",
    "D": "A with strong augmentation",
    "E": "A at 288 pixels (rule V)",
    "F": "B at 288 pixels (rule V)",
    "G": "A with the lite2 backbone (rule W)",
}


def _auc_row(summary: dict) -> list[float]:
    return [summary["pooled_auc"], *summary["pooled_auc_ci95"]]


def card_summary(result: dict) -> dict:
    """What the model card shows of the study: ``classifier.recipe_cross_validation``."""
    seeds = result["seeds"]
    first = next(iter(seeds))
    return {
        "source": f"`reports/studies/{RESULT_FILE}`, written by `studies/cross_validation.py` "
                  "(rules T, V, W and X of `docs/selection_rules.md`)",
        "n_images": result["n_images"], "n_patients": result["n_patients"],
        "n_malignant": result["n_malignant"],
        "recipes": RECIPE_NAMES,
        "pooled_auc": {name: {key: _auc_row(v) for key, v in s["auc"].items()}
                       for name, s in seeds.items()},
        "per_fold_auc": {name: s["auc"]["A+B"]["per_fold_auc"] for name, s in seeds.items()},
        "seed_ensemble_auc": _auc_row(result["seed_ensemble"]["A+B"])
        if "seed_ensemble" in result else None,
        "ensembles": result.get("ensembles"),
        "specificity_at_sensitivity_0.90": {
            name: s["auc"]["A+B"]["pooled_specificity_at_sensitivity_0.90"]
            for name, s in seeds.items()},
        "threshold_fit": [{key: m[key] for key in ("target", "mean_sensitivity",
                                                   "share_below_0.90", "mean_specificity",
                                                   "fit_share", "splits")}
                          for m in (seeds[first]["threshold_within"],
                                    *seeds[first]["threshold_margins"])],
        "threshold_fit_seed": first,
        "aux_gain": result["question_1"],
        "strong_two_view": {name: s["strong_two_view"]["pairs"] for name, s in seeds.items()
                            if "strong_two_view" in s},
        "birads4_triage": {name: s["birads4_triage"] for name, s in seeds.items()
                           if "birads4_triage" in s},
        "resolution": result.get("rule_v"),
        "rule_w": result.get("rule_w"),
        "lesion_reading": {name: {
            "pooled_auc": _auc_row(s["lesion_reading"]["auc"]),
            "minus_per_image": s["lesion_reading"]["minus_per_image"],
            "specificity_at_sensitivity_0.90":
                s["lesion_reading"]["auc"]["pooled_specificity_at_sensitivity_0.90"]}
            for name, s in seeds.items() if "lesion_reading" in s} or None,
    }


def write_card(models: Path, result: dict) -> None:
    """Record the summary as evidence about the release in ``models`` (`busdx release`
    renders it into the card)."""
    from busdx.evaluation.model_card import update_card

    update_card(models, "classifier", {"recipe_cross_validation": card_summary(result)})


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("collect", help="the device's run records into the out-of-fold record")
    c.add_argument("--data", required=True, help="BUS-BRA root")
    c.add_argument("--runs", nargs="+", required=True, metavar="FILE")
    c.add_argument("--out", default="reports/studies")
    a = sub.add_parser("analyse", help="the rule's answers from the out-of-fold record")
    a.add_argument("--out", default="reports/studies")
    a.add_argument("--models", default=None,
                   help="also write the summary into this folder's model card")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.step == "collect":
        (out / OOF_FILE).write_text(json.dumps(collect(args.data, args.runs)) + "\n")
        return 0
    result = analyse(json.loads((out / OOF_FILE).read_text()))
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    plot(json.loads((out / OOF_FILE).read_text()), result, out / FIGURE_FILE)
    if args.models:
        write_card(Path(args.models), result)
    for name, s in result["seeds"].items():
        for key, v in s["auc"].items():
            lo, hi = v["pooled_auc_ci95"]
            log.info("%s %-4s pooled AUC %.4f (%.4f-%.4f), folds %s", name, key, v["pooled_auc"],
                     lo, hi, " ".join(f"{x:.3f}" for x in v["per_fold_auc"].values()))
        for key, label in (("aux_gain", "A+C minus A+B"), ("strong_two_view", "D+B minus A+B"),
                           ("resolution", "E+F minus A+B"),
                           ("two_view_lite2", "G+B minus A+B")):
            if key in s:
                g = s[key]["pairs"]
                log.info("%s %s: %+.4f (%+.4f to %+.4f)", name, label, g["difference"],
                         *g["difference_ci95"])
        w = s["threshold_within"]
        log.info("%s threshold within a network: sensitivity %.3f (5-95%%: %.3f-%.3f), "
                 "below 0.90 in %.0f%% of splits; transfer across folds: %.3f / %.3f", name,
                 w["mean_sensitivity"], w["sensitivity_quantiles_5_50_95"][0],
                 w["sensitivity_quantiles_5_50_95"][2], 100 * w["share_below_0.90"],
                 s["threshold_transfer"]["mean_sensitivity"],
                 s["threshold_transfer"]["mean_specificity"])
    log.info("question 1: %s", json.dumps(result["question_1"]))
    if "rule_v" in result:
        log.info("rule V: %s", json.dumps(result["rule_v"]))
    if "rule_w" in result:
        log.info("rule W: %s", json.dumps(result["rule_w"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
