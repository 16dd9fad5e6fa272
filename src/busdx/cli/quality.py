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
