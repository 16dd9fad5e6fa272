"""What the studies' command lines share: BUS-BRA, the models and an output folder in; one JSON
record (and whatever else a study draws) out. Each study's ``main`` names its record and says
what to log of it."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("studies")


def run_study(doc: str | None, name: str, compute: Callable[[argparse.Namespace], dict],
              describe: Callable[[dict, argparse.Namespace, Path], None],
              argv: list[str] | None = None) -> int:
    """Parse ``--data --models --out --threads``, write ``compute(args)`` to OUT/NAME.json,
    then let ``describe(result, args, out)`` log it (and draw what the study draws)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="BUS-BRA root")
    parser.add_argument("--models", default=None, help="models folder (default: the bundled)")
    parser.add_argument("--out", default="reports/studies")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = compute(args)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    describe(result, args, out)
    log.info("wrote %s", out / f"{name}.json")
    return 0
