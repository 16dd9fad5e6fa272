"""The one entry point, ``busdx``. Each command lives in its own module under busdx.cli and
registers itself; heavy imports (torch, onnxruntime) happen only when a command runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys

from busdx import DISCLAIMER, __version__
from busdx.errors import BusdxError

log = logging.getLogger("busdx")

# Modules under busdx.cli with a ``register(subparsers, groups)`` function, in the order --help
# lists their commands: what users run first, then what researchers run.
FIRST_MODULES = ("serve", "predict", "dicomweb")
COMMAND_MODULES = ("data", "segmentation", "classification", "external", "no_lesion", "presence",
                   "quality", "release", "report")
# Commands whose tasks (segmentation, classification) are registered by the modules above.
GROUPS = {
    "train": "train a model (writes a run folder under runs/)",
    "export": "export a trained checkpoint to ONNX (into a staging folder, runs/release)",
    "evaluate": "score a release: the test fold, validation choices, external images",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busdx",
        description="Breast ultrasound decision support. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"busdx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in FIRST_MODULES:
        importlib.import_module(f"busdx.cli.{name}").register(sub, {})
    groups = {
        name: sub.add_parser(name, help=text, description=text).add_subparsers(
            dest="task", required=True, metavar="TASK"
        )
        for name, text in GROUPS.items()
    }
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"busdx.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"busdx.cli.{name}":
                continue
            raise
        module.register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # the command a run records (model card, training.json): as a user would type it again
    args.invocation = "busdx " + shlex.join(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except BusdxError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
