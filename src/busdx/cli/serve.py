"""``busdx serve [--host 127.0.0.1] [--port 8000] [--max-upload-mb 25] [--allowed-host NAME]``:
the web page, the REST API and its docs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from busdx.data.preprocess import MAX_UPLOAD_MB, UPLOAD_SECONDS

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


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
    parser.add_argument("--upload-timeout", type=_seconds, default=UPLOAD_SECONDS,
                        metavar="S", help="seconds a client may take to send its file (default "
                        f"{UPLOAD_SECONDS:g}); a slower one gets a 408")
    parser.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                        help="a host name the server answers to (repeat for several; '*' for "
                             "any). Default: the loopback names and --host. Requests naming "
                             "another host get a 400, so that a web page elsewhere cannot "
                             "reach this server through DNS rebinding; add the name users "
                             "type, e.g. --allowed-host busdx.hospital.local")
    parser.set_defaults(func=run)


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """The Host names to accept: the loopback names, the bound address (unless it is every
    address), and those asked for."""
    names = list(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return list(dict.fromkeys(names + list(extra or [])))


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"a whole number of MB from 1 to 4096, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"seconds from 0.1 to 3600, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from busdx.api.app import Limits, create_app
    from busdx.inference.models import Models

    # Load before binding, so missing models are a clear error rather than a failed startup.
    models = Models.load(args.models)
    hosts = allowed_hosts(args.host, args.allowed_host)
    limits = Limits(max_upload_bytes=args.max_upload_mb * 2**20,
                    upload_seconds=args.upload_timeout)
    app = create_app(models=models, limits=limits, allowed_hosts=hosts)
    if args.host not in LOOPBACK_NAMES:
        log.warning("serving on %s: anyone who can reach this address can use it", args.host)
    log.info("answering requests for the host names %s", ", ".join(hosts))
    log.info("open http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0
