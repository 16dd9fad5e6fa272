"""``busdx dicomweb --url URL [--state DIR]``: analyse the breast ultrasound images a PACS
receives and store the results back, over DICOMweb (busdx.pacs.dicomweb)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_ENV = "BUSDX_DICOMWEB_TOKEN"


def register(subparsers, groups) -> None:
    parser = subparsers.add_parser(
        "dicomweb",
        help="analyse new breast ultrasound images on a PACS and store SR and SEG back",
        description="Poll a DICOMweb server (QIDO-RS) for breast ultrasound instances not yet "
        "analysed, retrieve each (WADO-RS), analyse it and store its measurement report and "
        "segmentation in its study (STOW-RS). The worker keeps its place in --state: it never "
        "analyses an instance twice, and a restart goes on where it stopped. A server that "
        "is down is retried. Send the server a bearer token with $" + TOKEN_ENV + ".")
    parser.add_argument("--url", required=True,
                        help="the DICOMweb root, e.g. http://orthanc:8042/dicom-web")
    parser.add_argument("--state", type=Path, default=Path("dicomweb-state"), metavar="DIR",
                        help="where the worker keeps its place (default ./dicomweb-state)")
    parser.add_argument("--models", type=Path, metavar="DIR",
                        help="models folder (default: $BUSDX_MODELS, else the bundled models/)")
    parser.add_argument("--interval", type=float, default=30.0, metavar="S",
                        help="seconds between passes (default 30)")
    parser.add_argument("--once", action="store_true", help="one pass, then stop")
    parser.add_argument("--any-body-part", action="store_true",
                        help="every ultrasound series, not only those whose body part is BREAST")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from busdx.pacs.dicomweb import Worker, WorkerConfig

    token = os.environ.get(TOKEN_ENV)
    config = WorkerConfig(url=args.url, state=args.state, models_dir=args.models,
                          body_part=None if args.any_body_part else "BREAST",
                          interval=args.interval,
                          headers={"Authorization": f"Bearer {token}"} if token else None)
    worker = Worker(config)
    log.info("watching %s for breast ultrasound images (%d handled before, place kept in %s)",
             args.url, len(worker.done), args.state)
    try:
        worker.run(passes=1 if args.once else None)
    except KeyboardInterrupt:
        log.info("stopped; the next start goes on from here")
        return 130
    return 0
