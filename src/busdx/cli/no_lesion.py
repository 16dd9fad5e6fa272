"""``busdx evaluate no-lesion``: how often the product says "no lesion" on lesion-free windows of
held-out images (BUS-BRA's test fold, BrEaST-Lesions-USG's test half and its normal scans), and
how often it still finds the lesion in the whole images (busdx.evaluation.no_lesion)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    p = groups["evaluate"].add_parser(
        "no-lesion", help="'no lesion' on lesion-free windows of held-out images",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--data", metavar="DIR", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--breast", metavar="DIR", help="a BrEaST-Lesions-USG folder (optional)")
    p.add_argument("--subset", choices=("dev", "test"), default="test",
                   help="BUS-BRA's validation patients and BrEaST's development half (dev: for "
                   "choices), or BUS-BRA's test fold and BrEaST's test half (test)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="the release to score (default: the bundled models)")
    p.add_argument("--out", default="reports/no_lesion", metavar="DIR",
                   help="where the per-image rows go")
    p.add_argument("--no-evidence", action="store_true", help="print only: write no evidence")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from busdx.data.index import load_index, resolve_root
    from busdx.data.sites import busbra_records, read_breast
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.evidence import write_record
    from busdx.evaluation.model_card import evidence_dir_for
    from busdx.evaluation.no_lesion import score_no_lesion
    from busdx.inference.models import Models

    index = load_index(resolve_root(args.data))
    records = busbra_records(index) + (read_breast(args.breast) if args.breast else [])
    # BUS-BRA: the test fold, or the validation patients the bundled networks were chosen on
    split = make_split(index, SplitConfig(test_fold=5))
    keep = {r.id for r in (split.test if args.subset == "test" else split.val)}
    records = [r for r in records
               if (r.site == "busbra" and r.id in keep)
               or (r.site == "breast" and r.split == args.subset)]
    models = Models.load(args.models, threads=args.threads)
    with tqdm(total=len(records), desc="no-lesion", file=sys.stderr) as bar:
        result = score_no_lesion(records, models, progress=bar.update)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"no_lesion_{args.subset}_rows.json").write_text(json.dumps(result["rows"], indent=1))
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["subset"] = args.subset
    for site, s in summary["sites"].items():
        free, found = s["lesion_free_reported_no_lesion"], s["lesion_images_with_a_lesion_found"]
        print(f"{site:8s} lesion-free images reported 'no lesion': {free['hits']} of "
              f"{free['n']} ({100 * (free['share'] or 0):.1f}%); lesion images with a lesion "
              f"found: {found['hits']} of {found['n']} ({100 * (found['share'] or 0):.1f}%)")
    if not args.no_evidence:
        write_record(evidence_dir_for(models.directory), f"no_lesion.{args.subset}", summary,
                     kind="evaluation" if args.subset == "test" else "selection",
                     release=models.release, command=args.invocation)
    return 0
