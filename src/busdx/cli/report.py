"""``busdx report``: all figures and the Markdown summary, from the bundled models."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _default_models() -> Path:
    import busdx

    return Path(busdx.__file__).resolve().parents[2] / "models"


def _report(args: argparse.Namespace) -> int:
    from busdx.data.index import resolve_root
    from busdx.errors import BusdxError
    from busdx.evaluation.report import run_report
    from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

    models = Path(args.models) if args.models else _default_models()
    for name in (SEGMENTER_FILE, CLASSIFIER_FILE, "release.json"):
        if not (models / name).is_file():
            raise BusdxError(f"{models / name} is missing: train and export the models first")
    readme = None if args.no_readme else Path(args.readme)
    result = run_report(resolve_root(args.data), args.out, models, args.test_fold, readme,
                        args.threads)
    log.info("wrote %d figures and %s", len(result.figures), Path(args.out) / "REPORT.md")
    if result.mismatches:
        log.error("the bundled models do not reproduce their model card: %s",
                  "; ".join(result.mismatches))
        return 1
    return 0


def register(sub, groups) -> None:
    p = sub.add_parser("report", help="regenerate every figure and the results summary")
    p.add_argument("--data", metavar="DIR", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--out", default="reports", metavar="DIR", help="figures and REPORT.md")
    p.add_argument("--models", metavar="DIR", help="bundled models (default: the repo's models/)")
    p.add_argument("--test-fold", type=int, default=5)
    p.add_argument("--readme", default="README.md", help="README whose results block is rewritten")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.set_defaults(func=_report)
