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
    from busdx.data.check import check_breast, check_dataset, format_report

    report = check_dataset(args.data, split_config(args), progress=not args.json)
    breast = check_breast(args.breast) if args.breast else None
    if args.json:
        data = report.to_dict()
        if breast is not None:
            data["breast"] = {"errors": breast[0], "counts": breast[1]}
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
        if breast is not None:
            errors, counts = breast
            print(f"\nBrEaST-Lesions-USG ({args.breast}): "
                  + ", ".join(f"{n} {k}" for k, n in counts.items()))
            print("\n".join(f"  error: {e}" for e in errors) or "  no problems found")
    return 0 if report.ok and not (breast and breast[0]) else 1


def _preview(args: argparse.Namespace) -> int:
    from busdx.data.preview import preview

    out = preview(args.data, args.out, split_config(args), n_images=args.images, seed=args.seed)
    log.info("wrote %s", out)
    if args.breast:
        from pathlib import Path

        from busdx.data.preview import preview_breast

        second = Path(args.out).with_name(f"{Path(args.out).stem}-breast.png")
        log.info("wrote %s", preview_breast(args.breast, second, args.images, args.seed))
    return 0


def register(sub, groups) -> None:
    data = sub.add_parser("data", help="check the datasets (BUS-BRA, BrEaST-Lesions-USG)")
    tasks = data.add_subparsers(dest="task", required=True, metavar="TASK")
    check = tasks.add_parser(
        "check",
        help="check files, sizes, masks and splits; exit 1 on anything that would corrupt training",
    )
    add_data_arguments(check)
    check.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    check.add_argument("--breast", metavar="DIR",
                       help="also check a BrEaST-Lesions-USG folder (scans, masks, its split)")
    check.set_defaults(func=_check)
    prev = tasks.add_parser("preview", help="a figure of images with masks and the split balance")
    add_data_arguments(prev)
    prev.add_argument("--out", required=True, metavar="FILE.png")
    prev.add_argument("--images", type=int, default=12, help="images in the grid")
    prev.add_argument("--breast", metavar="DIR",
                      help="also a figure of a BrEaST-Lesions-USG folder (OUT-breast.png)")
    prev.set_defaults(func=_preview)
