"""What the studies share: BUS-BRA's validation split, the product's analysis of each unaltered
validation image (computed once and handed to every study that needs it), and the command line:
BUS-BRA, the models and an output folder in; the summary NAME.json and the per-image rows
NAME_rows.json it follows from, out.

The rows are what makes a study checkable without re-running it: ``summarise(rows)`` must give
the recorded summary (pure, milliseconds), and any image re-run must give its recorded row."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("studies")


def validation_records(data: str) -> list:
    """BUS-BRA's patient-wise validation split beside test fold 5 (the fold is never read)."""
    from busdx.data.index import load_index, resolve_root
    from busdx.data.splits import SplitConfig, make_split

    return make_split(load_index(resolve_root(data)), SplitConfig(test_fold=5)).val


def lesion_pairs(records: list) -> list[tuple[str, object, object]]:
    """(patient, left, right) for every patient with both halves, in patient order."""
    halves: dict[str, dict[str, object]] = {}
    for r in records:
        if r.side in ("left", "right"):
            halves.setdefault(r.patient, {})[r.side] = r
    return [(k, v["left"], v["right"]) for k, v in sorted(halves.items()) if len(v) == 2]


class Baseline:
    """The served analysis (``busdx.inference.analyze`` with its defaults, no overlays) of each
    unaltered image, computed on first use and kept: the studies that compare changed images
    with the image itself share these instead of analysing it once each."""

    def __init__(self, models) -> None:
        self.models = models
        self._analyses: dict[str, object] = {}

    def analysis(self, record, models=None):
        """The analysis of ``record``'s image file; ``models`` (the study's) must be the same
        release as the baseline's."""
        if models is not None and models.version != self.models.version:
            raise ValueError(f"the baseline was computed with models {self.models.version}, "
                             f"not {models.version}")
        if record.id not in self._analyses:
            from busdx.inference.decode import decode
            from busdx.inference.pipeline import analyze

            # the decoded file, as the product reads an upload of it
            self._analyses[record.id] = analyze(decode(str(record.image_path)), self.models,
                                                render_overlays=False)
        return self._analyses[record.id]


def plain_analysis(record, image, models, baseline: Baseline | None):
    """The served analysis of the unaltered ``image`` (decoded from ``record``), from
    ``baseline`` when one is given."""
    if baseline is not None:
        return baseline.analysis(record, models)
    from busdx.inference.pipeline import analyze

    return analyze(image, models, render_overlays=False)


def rows_path(out: Path, name: str) -> Path:
    return out / f"{name}_rows.json"


def _lines(value, depth: int = 0) -> str:
    """JSON with every dict opened over lines and every list of containers one item a line."""
    pad = " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = (f"{pad}{json.dumps(str(k))}: {_lines(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        items = (pad + json.dumps(v, separators=(",", ":")) for v in value)
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"
    return json.dumps(value, separators=(",", ":"))


def write_rows(collected: dict, path: Path) -> None:
    """The per-image rows: a list of images one image a line, so that a re-run's difference
    shows image by image."""
    path.write_text(_lines(collected) + "\n")


def read_rows(path: Path) -> dict:
    return json.loads(path.read_text())


def run_study(doc: str | None, name: str, collect: Callable[[argparse.Namespace], dict],
              summarise: Callable[[dict], dict],
              describe: Callable[[dict, argparse.Namespace, Path], None],
              argv: list[str] | None = None, breast: bool = False) -> int:
    """Parse ``--data --models --out --threads`` (and ``--breast`` for a study of the second
    site); write ``collect(args)`` to OUT/NAME_rows.json and ``summarise`` of it to
    OUT/NAME.json, then let ``describe(result, args, out)`` log it (and draw what the study
    draws)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="BUS-BRA root")
    if breast:
        parser.add_argument("--breast", required=True, help="BrEaST-Lesions-USG root")
    parser.add_argument("--models", default=None, help="models folder (default: the bundled)")
    parser.add_argument("--out", default="reports/studies")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    collected = collect(args)
    write_rows(collected, rows_path(out, name))
    result = summarise(collected)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    describe(result, args, out)
    log.info("wrote %s and %s", out / f"{name}.json", rows_path(out, name))
    return 0
