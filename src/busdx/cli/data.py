"""``busdx data check`` and ``busdx data preview``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="BUS-BRA root (default: $BUSDX_DATA)")
    parser.add_argument("--test-fold", type=int, default=5, help="official fold held out (default 5)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="patients for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")


def split_config(args: argparse.Namespace):
    from busdx.data.splits import SplitConfig

    return SplitConfig(test_fold=args.test_fold, val_fraction=args.val_fraction, seed=args.seed)


def _check(args: argparse.Namespace) -> int:
    from busdx.data.check import check_dataset, format_report

    report = check_dataset(args.data, split_config(args), progress=not args.json)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _preview(args: argparse.Namespace) -> int:
    from busdx.data.preview import preview

    out = preview(args.data, args.out, split_config(args), n_images=args.images, seed=args.seed)
    log.info("wrote %s", out)
    return 0


def register(sub, groups) -> None:
    data = sub.add_parser("data", help="inspect a BUS-BRA root")
    tasks = data.add_subparsers(dest="task", required=True, metavar="TASK")
    check = tasks.add_parser(
        "check",
        help="check files, sizes, masks and splits; exit 1 on anything that would corrupt training",
    )
    add_data_arguments(check)
    check.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    check.set_defaults(func=_check)
    prev = tasks.add_parser("preview", help="a figure of images with masks and the split balance")
    add_data_arguments(prev)
    prev.add_argument("--out", required=True, metavar="FILE.png")
    prev.add_argument("--images", type=int, default=12, help="images in the grid")
    prev.set_defaults(func=_preview)
