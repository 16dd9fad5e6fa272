"""``busdx serve [--host 127.0.0.1] [--port 8000] [--max-upload-mb 25]``: the web page, the REST
API and its docs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from busdx.data.preprocess import MAX_UPLOAD_MB

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the web page and REST API (http://127.0.0.1:8000/)",
        description="Serve the page at /, the API under /api and its docs at /docs. "
        "Binds to the loopback address unless --host says otherwise.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--models", type=Path, metavar="DIR",
                        help="models folder (default: $BUSDX_MODELS, else the bundled models/)")
    parser.add_argument("--max-upload-mb", type=_megabytes, default=MAX_UPLOAD_MB, metavar="MB",
                        help=f"the largest file accepted, in MB (default {MAX_UPLOAD_MB}; "
                             "uncompressed DICOM cine loops often need more). Each analysis in "
                             "progress holds its file in memory, about twice over while a DICOM "
                             "is read")
    parser.set_defaults(func=run)


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"a whole number of MB from 1 to 4096, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from busdx.api.app import Limits, create_app
    from busdx.inference.models import Models

    # Load before binding, so missing models are a clear error rather than a failed startup.
    models = Models.load(args.models)
    app = create_app(models=models, limits=Limits(max_upload_bytes=args.max_upload_mb * 2**20))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use it", args.host)
    log.info("open http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0
