"""``busdx release``: the one command that writes models/.

It ships a staging folder (graphs and release.json, as written by export, calibration and the
input check) into models/, after loading it as serving would, and renders the model card and
the docs page of how the models were made from the release and the evidence about it. Without
``--from`` it only renders them again (after new evidence).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub, groups) -> None:
    p = sub.add_parser("release", help="ship a staging folder into models/ and write the card",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="the staging folder to ship (e.g. runs/release); without it the card "
                   "and docs are only rendered again")
    p.add_argument("--models", metavar="DIR",
                   help="the models folder to write (default: the repository's models/)")
    p.add_argument("--evidence", metavar="DIR",
                   help="the evidence to render from (default: the repository's evidence/)")
    p.add_argument("--docs", default="docs", metavar="DIR",
                   help="where the page of how the models were made goes ('' for none)")
    p.add_argument("--carry", nargs="+", default=[], metavar="NAME",
                   help="evidence records about the release being replaced that stay true of "
                   "the new one (how its unchanged networks were trained and chosen): they are "
                   "stamped with the new release; give --why")
    p.add_argument("--restamp", nargs="+", default=[], metavar="NAME",
                   help="records of the staging folder's own evidence written before its last "
                   "settings were fitted (the export's, before the checks and the calibration "
                   "went on top) that stay true of the final graphs: they are stamped with the "
                   "release; give --why")
    p.add_argument("--why", default="", metavar="TEXT",
                   help="why the --carry and --restamp records stay true (kept in "
                   "release.carried)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from busdx.errors import BusdxError
    from busdx.evaluation.card import write_model_card
    from busdx.evaluation.evidence import default_evidence_dir, load_records, write_record
    from busdx.inference.models import Models, default_models_dir
    from busdx.release import RELEASE_FILE, load_release, with_graphs, write_release

    models = Path(args.models) if args.models else default_models_dir()
    evidence = Path(args.evidence) if args.evidence else default_evidence_dir()
    if args.source:
        source = Path(args.source)
        if source.resolve() == models.resolve():
            raise BusdxError(f"{source} is the models folder itself")
        # load it as serving would: a release that does not serve is not shipped
        Models.load(source, threads=1)
        release = load_release(source)
        if (args.carry or args.restamp) and not args.why:
            raise BusdxError("--carry and --restamp need --why: say why the records stay true")
        previous = (load_release(models).version if (models / RELEASE_FILE).is_file()
                    else None)
        carried = {}
        for name in args.carry:
            record = load_records(evidence).get(name)
            if record is None or record.release != previous:
                raise BusdxError(f"--carry {name}: no record of that name about the release "
                                 f"being replaced ({previous})")
            carried[name] = record
        staged = load_records(source / "evidence")
        restamped = {}
        for name in args.restamp:
            record = staged.get(name)
            if record is None or record.kind == "history" or not record.stale(release):
                raise BusdxError(f"--restamp {name}: {source} has no record of that name written "
                                 "before its final settings")
            if name in carried:
                raise BusdxError(f"--restamp {name}: it is carried as well; give it once")
            restamped[name] = record
        models.mkdir(parents=True, exist_ok=True)
        for graph in release.graphs:
            shutil.copy2(source / graph.file, models / graph.file)
        write_release(with_graphs(release, models), models)
        # the evidence gathered on the staging folder is about this very release
        for name, record in staged.items():
            if record.kind != "history" and not record.stale(release):
                write_record(evidence, name, record.results, kind=record.kind,
                             release=record.release, command=record.command, at=record.at,
                             date=record.date, commit=record.commit)
        for name, record in {**carried, **restamped}.items():
            write_record(evidence, name, record.results, kind=record.kind,
                         release=release, command=record.command, at=record.at,
                         date=record.date, commit=record.commit)
        if carried or restamped:
            write_record(evidence, "release.carried",
                         {"from": previous, "records": sorted(carried), "why": args.why,
                          **({"restamped": {n: r.release for n, r in sorted(restamped.items())}}
                             if restamped else {})},
                         kind="about", release=release, command=args.invocation)
        log.info("shipped %s into %s (release %s, %d evidence records, %d carried from %s)",
                 source, models, release.version, len(staged), len(carried), previous)
    if not (models / RELEASE_FILE).is_file():
        raise BusdxError(f"no {RELEASE_FILE} in {models}: ship one with --from DIR")
    card = write_model_card(models, evidence, Path(args.docs) if args.docs else None)
    stale = [r.name for r in load_records(evidence).values()
             if r.kind != "history" and r.stale(load_release(models))]
    if stale:
        log.warning("%d evidence records describe an earlier release (evaluate this one: "
                    "`busdx evaluate classification`, `busdx evaluate segmentation`): %s",
                    len(stale), ", ".join(stale))
    print(f"wrote {card}")
    return 0
