"""``busdx evaluate external --data DIR [--labels CSV] --out DIR``.

Runs the bundled models on labelled images from elsewhere, end to end and at the operating point
frozen on BUS-BRA validation (nothing is refitted). Writes external.json, external_images.csv
and the ROC, confusion and reliability figures into --out. When the views of each lesion are
grouped (a 'lesion' column in the labels CSV, or --lesion-pattern), the lesion reading is scored
too, at the card's frozen lesion threshold, per image and per lesion. The model card is left alone: these
are your images, not the card's test fold. Images that cannot be read are listed with their error
and left out of the metrics.

With ``--recalibrate DIR``, DIR receives a copy of the models whose probability and threshold are
refitted on these images (busdx.evaluation.site), and external.json the refit with the operating
point's sensitivity and specificity estimated out of fold; the models folder itself is left alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from busdx.errors import BusdxError

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    p = groups["evaluate"].add_parser(
        "external", help="the bundled models on labelled images from another hospital or set",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="benign/ and malignant/ folders (masks as <stem>_mask.png, as in BUSI), "
                   "or any folder with a labels CSV")
    p.add_argument("--subset", choices=("dev", "test", "all"), default="all",
                   help="of a BrEaST-Lesions-USG folder: its development half, its test half "
                   "(never trained on or chosen with: docs/generalisation_plan.md) or all")
    p.add_argument("--evidence-name", metavar="NAME",
                   help="also record the headline numbers as evidence external.NAME about the "
                   "release scored (the model card shows it as a hospital never trained on)")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="columns image,label[,mask,patient,birads,lesion,frame], paths relative to "
                   "the CSV "
                   "(default: DIR/labels.csv when present, else the class folders)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="external.json, external_images.csv and the figures")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="models folder (default: $BUSDX_MODELS, else the bundled models/)")
    p.add_argument("--lesion-pattern", metavar="REGEX",
                   help="also score the lesion reading: this regular expression is searched in "
                   "each image's path (relative to DIR, or as written in the CSV) and its first "
                   "group names the lesion, e.g. '(bus_[0-9]+)-[lr]' or '(.*)/[^/]+$' for one "
                   "folder per lesion (a labels CSV can give a 'lesion' column instead)")
    p.add_argument("--dual-view", action="store_true",
                   help="each image is a dual-view capture (a lesion's two planes side by side): "
                   "its panes are analysed as two views of one lesion, and a mask given for it "
                   "is cut to each pane")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recalibrate", type=Path, metavar="DIR",
                   help="also write a copy of the models with the probability and threshold "
                   "refitted on these images to DIR (new or empty; needs at least "
                   # busdx.evaluation.site.MIN_PER_CLASS (a test keeps the two equal): the
                   # import would load numpy and the evaluation code at every busdx start
                   "20 malignant and 20 benign images)")
    p.add_argument("--target-sensitivity", type=float, metavar="S",
                   help="with --recalibrate: the sensitivity the new threshold keeps (default: "
                   "the card's, 0.90)")
    p.add_argument("--folds", type=int, default=5,
                   help="with --recalibrate: patient folds of the out-of-fold estimate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from busdx import __version__
    from busdx.cli.classification import print_table
    from busdx.evaluation.classification_plots import save_figures
    from busdx.evaluation.external import evaluate_external, read_external
    from busdx.evaluation.site import check_target
    from busdx.inference.models import Models

    if args.recalibrate is not None:
        check_target(args.recalibrate)  # before the long run, not after it
    if args.folds < 2:
        raise BusdxError("--folds must be at least 2")
    if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity < 1.0:
        raise BusdxError(f"--target-sensitivity must be between 0 and 1, not "
                         f"{args.target_sensitivity}")
    dataset = read_external(args.data, args.labels, lesion_pattern=args.lesion_pattern,
                            dual_view=args.dual_view, subset=args.subset)
    log.info("%d images (%s)%s", len(dataset.cases), dataset.layout,
             "".join(f"; skipped {n} {what}" for what, n in dataset.skipped.items()))
    models = Models.load(args.models, threads=args.threads)
    if args.lesion_pattern is not None and models.settings.lesion_threshold is None:
        raise BusdxError("these models' card offers no lesion reading: leave out --lesion-pattern")
    if args.dual_view and models.settings.lesion_threshold is None:
        log.warning("these models' card offers no lesion reading: the panes are scored one by "
                    "one only")
    # the uncalibrated ECE undoes everything added to the network's own logit
    result = evaluate_external(
        dataset, models,
        logit_offset=models.release.classifier.folded_intercept + models.settings.logit_shift,
        reps=args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {**result.to_dict(), "model_version": models.version, "busdx_version": __version__,
              "command": args.invocation}
    site, refused, curves = None, None, None
    if args.recalibrate is not None:
        try:
            site, curves = _recalibrate(args, models, result)
            report["site_calibration"] = site
        except BusdxError as err:
            # the evaluation is written all the same: the refit is the optional part
            refused = err
            report["site_calibration"] = {"error": str(err)}
    report["figures"] = [str(p) for p in save_figures(result.predictions, result.classification,
                                                       args.out, where="external images",
                                                       more_reliability=curves)]
    _write(args.out, report, result.rows)
    if args.evidence_name:
        # evidence about the release scored: the headline numbers, not the per-image rows
        _record(args, models, report, dataset)
    if refused is not None:
        raise refused
    bootstrap = ("patient" if dataset.has_patients
                 else "lesion" if dataset.lesions_from is not None else "image")
    print_table(report["classification"], bootstrap)
    _print_lesion_reading(report["lesion_reading"], bootstrap)
    seg = report["segmentation"]
    if seg:
        sys.stdout.write(f"{'Dice':16s} {seg['dice']['mean']:.3f} ± {seg['dice']['std']:.3f} "
                         f"({seg['n']} images with a ground-truth mask)\n")
    check = report["input_check"]
    if check and check["unusual"]:
        def acc(part: dict) -> str:
            return "n/a" if part["accuracy"] is None else f"{part['accuracy']:.3f}"

        sys.stdout.write(
            f"{'unlike training':16s} {check['unusual']} of {len(result.predictions)} images "
            f"(calls right: {acc(check['calls_when_unusual'])} of those, "
            f"{acc(check['calls_otherwise'])} of the rest)\n")
    if report["framed"]:
        sys.stdout.write(f"{'scan area cut':16s} {report['framed']} of "
                         f"{len(result.predictions)} images (frame or screen: their scan_area column)\n")
    if result.failed:
        log.warning("%d image(s) could not be analysed: see %s", result.failed,
                    args.out / "external_images.csv")
    if result.mask_failed:
        log.warning("%d ground-truth mask(s) could not be used (those images are classified but "
                    "left out of Dice): see %s", result.mask_failed,
                    args.out / "external_images.csv")
    if not dataset.has_patients:
        log.warning("no patient ids: the intervals resample %s, and are too narrow when a "
                    "patient has several (give a 'patient' column in a labels CSV)",
                    "lesions" if dataset.lesions_from is not None else "images")
    if site is not None:
        _print_site(site)
        log.info("wrote the recalibrated models to %s (serve them with --models %s)",
                 args.recalibrate, args.recalibrate)
    log.info("wrote %s", args.out / "external.json")
    return 0


def _record(args, models, report: dict, dataset) -> None:
    from busdx.evaluation.evidence import write_record
    from busdx.evaluation.model_card import evidence_dir_for

    c, seg = report["classification"], report["segmentation"] or {}
    results = {
        "what": f"{dataset.layout}, {len(dataset.cases)} lesion images",
        "n": c.get("n"), "auc": c.get("auc"), "auc_ci95": c.get("auc_ci95"),
        "sensitivity": c.get("sensitivity"), "sensitivity_ci95": c.get("sensitivity_ci95"),
        "specificity": c.get("specificity"), "specificity_ci95": c.get("specificity_ci95"),
        "tp": c.get("tp"), "fp": c.get("fp"), "tn": c.get("tn"), "fn": c.get("fn"),
        "ece_calibrated": c.get("ece_calibrated"), "empty_masks": c.get("empty_masks"),
        "dice": (seg.get("dice") or {}).get("mean"), "dice_median": (seg.get("dice") or {}).get(
            "median"), "dice_n": seg.get("n"), "threshold": models.settings.threshold,
    }
    write_record(evidence_dir_for(models.directory), f"external.{args.evidence_name}", results,
                 kind="evaluation", release=models.release, command=args.invocation)


def _print_lesion_reading(lesion: dict | None, bootstrap: str) -> None:
    from busdx.cli.classification import print_table

    if lesion is None:
        return
    if "skipped" in lesion:
        log.warning("lesion reading not scored: %s", lesion["skipped"])
        return
    for unit in ("image", "lesion"):
        sys.stdout.write(f"\nlesion reading, per {unit} (threshold {lesion['threshold']:.4f}; "
                         f"{lesion['multi_view_lesions']} lesions with several views)\n")
        print_table(lesion[unit], bootstrap, unit="images" if unit == "image" else "lesions")


def _write(out: Path, report: dict, rows: list[dict]) -> None:
    from busdx.evaluation.external import ROW_COLUMNS

    (out / "external.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / "external_images.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _recalibrate(args: argparse.Namespace, models, result) -> tuple[dict, dict]:
    """The refit's record for external.json, and its out-of-fold reliability curve."""
    import numpy as np

    from busdx.evaluation.site import fit_site_calibration, write_site_models
    from busdx.training.calibration import reliability

    target = args.target_sensitivity
    if target is None:
        target = models.release.classifier.target_sensitivity
    fit = fit_site_calibration(
        result.predictions, temperature=models.settings.temperature,
        logit_shift=models.settings.logit_shift, threshold=models.settings.threshold,
        target_sensitivity=target, folds=args.folds)
    record = {"data": str(args.data), "command": args.invocation,
              "from_version": models.version, "failed_images": result.failed}
    write_site_models(models.directory, args.recalibrate, fit, record)
    labels = np.array([p.label for p in result.predictions])
    curve = reliability(np.array(fit.out_of_fold_probabilities), labels)
    return ({**fit.to_dict(), **record, "threshold_before": models.settings.threshold,
             "models": str(args.recalibrate)}, {"site refit, out of fold": curve})


def _print_site(site: dict) -> None:
    from busdx.evaluation.card_markdown import point_rate

    sys.stdout.write(f"\nsite recalibration (target sensitivity {site['target_sensitivity']}; "
                     f"threshold {site['threshold_before']:.4f} -> {site['threshold']:.4f})\n")
    for name, key in (("as shipped", "shipped"), ("refit, out of fold", "out_of_fold"),
                      ("refit, in sample", "in_sample")):
        p = site[key]
        sys.stdout.write(f"{name:20s} sensitivity {point_rate(p, 'sensitivity')}  "
                         f"specificity {point_rate(p, 'specificity')}  ECE {p['ece']:.3f}\n")
