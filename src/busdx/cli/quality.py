"""``busdx evaluate input-check --data DIR``: the image-statistics ranges behind the product's
warning for images unlike the training images, fitted on the training split and written into
the model card (``input_check``), with how many validation and test images fall outside them."""

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
    p.add_argument("--models", default="models", help="the card to write into")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from busdx.evaluation.input_check import input_check_section
    from busdx.evaluation.model_card import update_card

    section = input_check_section(args.data, args.test_fold, args.split_seed)
    section["command"] = args.invocation
    update_card(Path(args.models), "input_check", section)
    log.info("wrote input_check into %s", Path(args.models))
    return 0
