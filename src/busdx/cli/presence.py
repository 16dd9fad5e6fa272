"""``busdx evaluate presence``: fit the presence check ("does the image show a lesion at
all?", busdx.evaluation.presence) into a staging release's segmenter graph, set its threshold on
held-out lesion images of both hospitals, and record the selection scores it was judged by."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    p = groups["evaluate"].add_parser(
        "presence", help="fit the 'no lesion' presence check into a staging release",
        description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--data", metavar="DIR", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--breast", metavar="DIR", required=True,
                   help="a BrEaST-Lesions-USG folder: its development half is fitted on")
    p.add_argument("--models", default="runs/release", metavar="DIR",
                   help="the staging release whose segmenter gains the check (not models/)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    import numpy as np
    import onnx
    from tqdm import tqdm

    from busdx.cli import writable_release
    from busdx.data.index import load_index, resolve_root
    from busdx.data.sites import busbra_records, read_breast
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation import presence as pr
    from busdx.evaluation.model_card import update_card
    from busdx.inference.models import open_session
    from busdx.models.contract import FEATURES_OUTPUT
    from busdx.release import load_release

    if not Path(args.breast).is_dir():
        print(f"--breast: no such folder: {args.breast}", file=sys.stderr)
        return 2
    folder = Path(writable_release(args.models, "runs/release"))
    release = load_release(folder / "release.json")
    graph_path = folder / release.segmenter.file
    session = open_session(graph_path, args.threads or 2, batch=1)
    if FEATURES_OUTPUT not in [o.name for o in session.get_outputs()]:
        print(f"{graph_path} has no {FEATURES_OUTPUT} output: export the segmenter again",
              file=sys.stderr)
        return 2
    size = release.segmenter.input_size
    t = release.segmenter.threshold
    mask_logit = math.log(t / (1 - t))
    index = load_index(resolve_root(args.data))
    split = make_split(index, SplitConfig(test_fold=5))
    busbra = {r.id: r for r in busbra_records(index)}
    dev = [r for r in read_breast(args.breast) if r.split == "dev"]

    def part(records, what):
        with tqdm(desc=what, unit="image", file=sys.stderr) as bar:
            x, kinds, positions = pr.example_inputs(session, pr.examples(records), size,
                                                    mask_logit, bar.update)
        return x, kinds, np.array([records[i].id for i in positions])

    x_train, k_train, _ = part([busbra[r.id] for r in split.train], "BUS-BRA training")
    x_val, k_val, _ = part([busbra[r.id] for r in split.val], "BUS-BRA validation")
    x_dev, k_dev, g_dev = part(dev, "BrEaST development half")
    y_train, y_dev = (np.isin(k, pr.LESION) for k in (k_train, k_dev))

    model = pr.fit(np.concatenate([x_train, x_dev]), np.concatenate([y_train, y_dev]))
    val_scores = model.logits(x_val)
    dev_scores = pr.out_of_fold(x_dev, y_dev, g_dev, (x_train, y_train))
    images = {"busbra_validation": val_scores[np.asarray(k_val) == "image"],
              "breast_dev_out_of_fold": dev_scores[np.asarray(k_dev) == "image"]}
    threshold = pr.threshold_keeping(images)
    # the outline's own verdict, on the network's input grid: any pixel above the threshold
    outlined = {name: x[:, -1] > 0 for name, x in (("val", x_val), ("dev", x_dev))}
    selection = {
        "busbra_validation": pr.shares(k_val, val_scores, outlined["val"], threshold),
        "breast_dev_out_of_fold": pr.shares(k_dev, dev_scores, outlined["dev"], threshold),
    }
    onnx.save(pr.with_presence_output(onnx.load(str(graph_path)), model, mask_logit),
              str(graph_path))
    record = {
        "what": "selection scores of the presence check (never test results): lesion-free "
                "images reported as 'no lesion' and lesion images still found, on BUS-BRA "
                "validation patients (never fitted on) and BrEaST's development half (scored "
                f"out of fold, {pr.FOLDS} folds by patient)",
        "rule": f"logistic regression (standardised, C={pr.C}) of lesion images and lesion "
                "windows against lesion-free windows and normal scans, on the segmenter's "
                "pooled encoder features, highest lesion logit and share above the mask "
                f"threshold; {model.n} examples of BUS-BRA training patients and BrEaST's "
                f"development half; threshold: the highest logit keeping "
                f"{100 * pr.KEEP:g}% of each site's held-out lesion images",
        "examples": {"busbra_training": _count(k_train), "breast_dev": _count(k_dev),
                     "busbra_validation": _count(k_val)},
        "threshold": threshold,
        "selection": selection,
        "command": args.invocation,
    }
    update_card(folder, "segmenter", {"presence_threshold": threshold, "presence": record})
    for name, result in selection.items():
        for how, r in result.items():
            print(f"{name:24s} {how:18s} 'no lesion' {r['no_lesion']['hits']:4d} of "
                  f"{r['no_lesion']['n']:4d}   lesions found {r['found']['hits']:4d} of "
                  f"{r['found']['n']:4d}   lesion windows found "
                  f"{r['lesion_windows_found']['hits']} of {r['lesion_windows_found']['n']}")
    print(f"presence threshold {threshold:.4g} written into {graph_path}")
    return 0


def _count(kinds) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(kinds).items()))
