"""``busdx evaluate external --data DIR [--labels CSV] --out DIR``.

Runs the bundled models on labelled images from elsewhere, end to end and at the operating point
frozen on BUS-BRA validation (nothing is refitted). Writes external.json, external_images.csv
and the ROC, confusion and reliability figures into --out. The model card is left alone: these
are your images, not the card's test fold. Images that cannot be read are listed with their error
and left out of the metrics.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    p = groups["evaluate"].add_parser(
        "external", help="the bundled models on labelled images from another hospital or set",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="benign/ and malignant/ folders (masks as <stem>_mask.png, as in BUSI), "
                   "or any folder with a labels CSV")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="columns image,label[,mask,patient,birads], paths relative to the CSV "
                   "(default: DIR/labels.csv when present, else the class folders)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="external.json, external_images.csv and the figures")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="models folder (default: $BUSDX_MODELS, else the bundled models/)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from busdx import __version__
    from busdx.cli.classification import print_table
    from busdx.evaluation.classification_plots import save_figures
    from busdx.evaluation.external import ROW_COLUMNS, evaluate_external, read_external
    from busdx.inference.models import Models

    dataset = read_external(args.data, args.labels)
    log.info("%d images (%s)%s", len(dataset.cases), dataset.layout,
             "".join(f"; skipped {n} {what}" for what, n in dataset.skipped.items()))
    models = Models.load(args.models, threads=args.threads)
    card = models.card.get("classifier", {})
    result = evaluate_external(dataset, models, logit_offset=card.get("logit_offset", 0.0),
                               reps=args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {**result.to_dict(), "model_version": models.version, "busdx_version": __version__,
              "command": args.invocation}
    report["figures"] = [str(p) for p in save_figures(result.predictions, result.classification,
                                                       args.out, where="external images")]
    (args.out / "external.json").write_text(json.dumps(report, indent=2) + "\n")
    with (args.out / "external_images.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
        writer.writeheader()
        writer.writerows(result.rows)
    bootstrap = "patient" if dataset.has_patients else "image"
    print_table(report["classification"], bootstrap)
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
    if result.failed:
        log.warning("%d image(s) could not be analysed: see %s", result.failed,
                    args.out / "external_images.csv")
    if result.mask_failed:
        log.warning("%d ground-truth mask(s) could not be used (those images are classified but "
                    "left out of Dice): see %s", result.mask_failed,
                    args.out / "external_images.csv")
    if not dataset.has_patients:
        log.warning("no patient ids: the intervals resample images, and are too narrow when "
                    "a patient has several images (give a 'patient' column in a labels CSV)")
    log.info("wrote %s", args.out / "external.json")
    return 0
