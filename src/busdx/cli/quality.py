"""``busdx evaluate input-check --data DIR``: the image-statistics ranges behind the product's
warning for images unlike the training images, fitted on the training split and written into a
staging release (``input_check``), with how many validation and test images fall outside them
as evidence; `busdx release --from` ships it."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    p = groups["evaluate"].add_parser(
        "input-check", help="fit the ranges behind the 'image unlike the training images' "
        "warning (model card: input_check)", description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--test-fold", type=int, default=5)
    p.add_argument("--split-seed", type=int, default=0,
                   help="the bundled networks' train/validation split")
    p.add_argument("--models", default="runs/release", metavar="DIR",
                   help="the staging release to write the ranges into (not models/; the default "
                   "starts as a copy of the bundled release)")
    p.set_defaults(func=run)
    register_appearance(groups)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from busdx.cli import writable_release
    from busdx.evaluation.input_check import input_check_section
    from busdx.evaluation.model_card import update_card

    folder = writable_release(args.models, "runs/release")
    section = input_check_section(args.data, args.test_fold, args.split_seed)
    section["command"] = args.invocation
    update_card(folder, "input_check", section)
    log.info("wrote input_check into %s", Path(folder))
    return 0


def register_appearance(groups) -> None:
    p = groups["evaluate"].add_parser(
        "appearance", help="fit the learned 'may not be a breast ultrasound' check into a "
        "staging release and score it (model card: input_check)",
        description="Fit the appearance check (busdx.evaluation.appearance) on BUS-BRA's "
        "training patients and BrEaST's development half, set its threshold on BUS-BRA's "
        "validation patients, write both into the staging release's segmenter graph, and "
        "report the share warned on the test fold, BrEaST's test half and --not-ultrasound.")
    p.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--breast", metavar="DIR", help="a BrEaST-Lesions-USG folder (optional)")
    p.add_argument("--not-ultrasound", metavar="DIR", action="append", default=[],
                   help="a folder of pictures that are not breast ultrasound (repeatable)")
    p.add_argument("--models", default="runs/release", metavar="DIR",
                   help="the staging release whose segmenter gains the check (not models/)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run_appearance)


def run_appearance(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import numpy as np
    import onnx
    from tqdm import tqdm

    from busdx.cli import writable_release
    from busdx.data.index import load_index, resolve_root
    from busdx.data.sites import busbra_records, read_breast
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation import appearance as ap
    from busdx.evaluation.model_card import update_card
    from busdx.inference.models import Models, open_session
    from busdx.inference.pipeline import analyze
    from busdx.inference.quality import NOT_ULTRASOUND
    from busdx.models.contract import FEATURES_OUTPUT
    from busdx.release import load_release

    # checked first: the fit takes minutes and rewrites the staging graph before they are read
    missing = [f for f in args.not_ultrasound if not Path(f).is_dir()]
    if missing:
        print(f"--not-ultrasound: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    folder = Path(writable_release(args.models, "runs/release"))
    release = load_release(folder / "release.json")
    graph_path = folder / release.segmenter.file
    threads = args.threads or 2
    session = open_session(graph_path, threads, batch=1)
    if FEATURES_OUTPUT not in [o.name for o in session.get_outputs()]:
        print(f"{graph_path} has no {FEATURES_OUTPUT} output: export the segmenter again",
              file=sys.stderr)
        return 2
    size = release.segmenter.input_size
    index = load_index(resolve_root(args.data))
    split = make_split(index, SplitConfig(test_fold=5))
    busbra = {r.id: r for r in busbra_records(index)}
    breast = read_breast(args.breast) if args.breast else []

    def features(records, what):
        # one image at a time: thousands of decoded scans need not be in memory together
        images = (image for _, image in ap.site_images(records))
        with tqdm(desc=what, unit="image", file=sys.stderr) as bar:
            return ap.segmenter_outputs(session, images, size, FEATURES_OUTPUT, bar.update)

    fit_records = [busbra[r.id] for r in split.train] + [r for r in breast if r.split == "dev"]
    model = ap.fit(features(fit_records, "fitting"))
    val = model.distances(features([busbra[r.id] for r in split.val], "validation"))
    threshold = float(np.percentile(val, ap.PERCENTILE))
    onnx.save(ap.with_appearance_output(onnx.load(str(graph_path)), model), str(graph_path))

    section = {"appearance_threshold": threshold}
    update_card(folder, "input_check", section)
    models = Models.load(folder, threads=threads)

    def warned(images, what):
        flags = []
        for _, image in tqdm(list(images), desc=what, file=sys.stderr):
            if image is None:  # refused when decoded
                flags.append(True)
                continue
            result = analyze(np.ascontiguousarray(image), models, render_overlays=False)
            first = result.input_check.warnings[0] if result.input_check and \
                result.input_check.warnings else ""
            flags.append(first.startswith(NOT_ULTRASOUND))
        return ap.warned_share(flags)

    results = {
        "busbra_test": warned(ap.site_images([busbra[r.id] for r in split.test]),
                              "BUS-BRA test fold"),
    }
    if breast:
        results["breast_test"] = warned(ap.site_images([r for r in breast
                                                        if r.split == "test"]),
                                        "BrEaST test half")
    for folder_path in args.not_ultrasound:
        results[f"not_ultrasound:{Path(folder_path).name}"] = warned(
            ap.folder_images(folder_path), Path(folder_path).name)
    record = {
        "what": "the share of images the product warns may not be breast ultrasound at all "
                "(either input check), or refuses",
        "rule": f"a Gaussian (Ledoit-Wolf shrinkage {model.shrinkage:.3f}) of the segmenter's "
                f"pooled encoder features over {model.n} images (BUS-BRA training patients, "
                "BrEaST development half, each with its lesion-free window); threshold: the "
                f"{ap.PERCENTILE:g}th percentile of {len(val)} BUS-BRA validation images' and "
                "windows' distances",
        "threshold": threshold,
        "results": results,
        "command": args.invocation,
    }
    update_card(folder, "input_check", {"appearance": record})
    for name, r in results.items():
        print(f"{name:32s} warned 'may not be a breast ultrasound': {r['warned']} of {r['n']} "
              f"({100 * (r['share'] or 0):.1f}%)")
    print(f"appearance threshold {threshold:.4g} written into {graph_path}")
    return 0
