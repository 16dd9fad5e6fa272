"""The work of an analysis that is not the two networks, before and after a change, in one run.

Two parts of ``busdx.inference.analyze`` are timed on the same images:

- the non-model part, decode to measurements: decoding, scan area, input check, letterbox, the
  mask back on the image's grid, components and holes, the lesion crops, calibration, the
  heatmap and the measurements (``timings_ms["total"]`` less ``render``);
- the API's pictures: ``render`` (the six PNGs of ``/api/analyze``).

The networks are taken out of the timing, not out of the analysis: each image is analysed once
with the real sessions, their outputs are kept, and the timed runs get them back from a replay
session in a few microseconds. Both sides feed the networks exactly the same inputs (the fast
tier checks that the logits are unchanged), so the replayed outputs are valid for both.

"After" is the working tree. With ``--before REV``, the busdx source at that git revision
(exported with ``git archive``) is timed too, as "before": each side runs in its own process,
alternately, ``--rounds`` times, so that a slower minute of the machine touches both. Both sides
load the same models folder, so REV must read it (a revision older than the release format of
``models/`` cannot: it stops with the reason). Without ``--before`` the working tree is timed
alone.

    python benchmarks/postprocess.py --data ../shared/data/busbra [-n 100] [--before HEAD~5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import (
    REPO,
    add_common_args,
    fold_images,
    machine,
    percentiles,
    setup_logging,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.postprocess")

TARGETS_MS = {"non_model": 5.0, "pictures": 10.0}  # p50, issue #40


class Replay:
    """A session that returns recorded outputs in the order they were recorded."""

    def __init__(self, session):
        self.session, self.recorded, self.queue = session, [], []

    def record(self, names, feeds):
        out = self.session.run(names, feeds)
        self.recorded.append(out)
        return out

    def run(self, names, feeds):
        return self.queue.pop(0) if self.queue else self.record(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def measure_side(paths: list[str], models_dir: str | None, warmup: int) -> dict:
    """In this process (busdx imported from wherever PYTHONPATH points): the timings per image."""
    from busdx.inference import analyze
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=1)
    seg, clf = Replay(models.segmenter), Replay(models.classifier)
    models.segmenter, models.classifier = seg, clf
    outputs = {}
    for path in paths:  # the networks, once per image
        seg.recorded, clf.recorded = [], []
        analyze(Path(path).read_bytes(), models, render_overlays=False)
        outputs[path] = (seg.recorded, clf.recorded)
    non_model, pictures, stages = [], [], {}
    # the pictures in passes of their own: a pass that renders leaves the next analysis slower
    # on the same core (measured: about 1 ms), which a server's requests, apart in time, are not
    for render in (False, True):
        for i, path in enumerate(paths * (1 + warmup)):
            data = Path(path).read_bytes()
            seg.queue, clf.queue = list(outputs[path][0]), list(outputs[path][1])
            t = analyze(data, models, render_overlays=render).timings_ms
            if i < len(paths) * warmup:
                continue
            if render:
                pictures.append(t["render"])
                continue
            non_model.append(t["total"])
            for stage, ms in t.items():
                stages.setdefault(stage, []).append(ms)
    return {"non_model": non_model, "pictures": pictures, "stages": stages}


def export_source(revision: str, into: Path) -> Path:
    """``src/`` of ``revision``, unpacked under ``into``."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", revision, "src"], stdout=out,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_side(src: Path, paths: list[str], args) -> dict:
    """One side in a process of its own, importing busdx from ``src``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job:
        # both sides analyse with the working tree's models (the default folder is relative to
        # the source, and the exported one has none)
        models = str(Path(args.models or REPO / "models").resolve())
        json.dump({"paths": paths, "models": models, "warmup": args.warmup}, job)
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--side", job.name], env=env,
                         capture_output=True, text=True)
    os.unlink(job.name)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        which = "the working tree" if src == REPO / "src" else f"revision {args.before}"
        raise SystemExit(f"busdx at {which} could not analyse with {models}: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> dict:
    pooled = {key: [v for run in runs for v in run[key]] for key in ("non_model", "pictures")}
    stages = {}
    for run in runs:
        for stage, values in run["stages"].items():
            stages.setdefault(stage, []).extend(values)
    return {"non_model_ms": percentiles(pooled["non_model"]),
            "pictures_ms": percentiles(pooled["pictures"]),
            "stages_ms_p50": {s: round(float(np.median(v)), 2) for s, v in stages.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("-n", type=int, default=100, help="fold-5 images (a seeded spread)")
    parser.add_argument("--before", default=None,
                        help="a git revision to time as 'before' (default: the working tree alone)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two sides")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per round")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side, print JSON
    args = parser.parse_args(argv)
    if args.side:
        job = json.loads(Path(args.side).read_text())
        print(json.dumps(measure_side(job["paths"], job["models"], job["warmup"])))
        return 0
    setup_logging()
    paths = [str(image.path) for image in fold_images(args.data, limit=args.n)]
    names = ("before", "after") if args.before else ("after",)
    sides: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"after": REPO / "src"}
        if args.before:
            commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.before],
                                    capture_output=True, text=True, check=True).stdout.strip()
            sources["before"] = export_source(args.before, Path(tmp))
        for round_ in range(args.rounds):
            for side in names:
                start = time.perf_counter()
                sides[side].append(run_side(sources[side], paths, args))
                log.info("round %d, %s: %.0f s", round_ + 1, side, time.perf_counter() - start)
    result = {"machine": machine(), "versions": versions(), "images": len(paths),
              "rounds": args.rounds,
              "before": {"revision": commit, **summary(sides["before"])} if args.before else None,
              "after": {"revision": "working tree", **summary(sides["after"])},
              "targets_p50_ms": TARGETS_MS}
    result["met"] = {part: result["after"][f"{part}_ms"]["p50"] <= target
                     for part, target in TARGETS_MS.items()}
    for side in names:
        log.info("%s: non-model p50 %.2f ms, pictures p50 %.2f ms", side,
                 result[side]["non_model_ms"]["p50"], result[side]["pictures_ms"]["p50"])
    write_result(args.out, "postprocess", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
