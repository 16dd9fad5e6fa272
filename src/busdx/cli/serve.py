"""``busdx serve [--host 127.0.0.1] [--port 8000] [--max-upload-mb 25] [--allowed-host NAME]
[--token-file FILE | --trusted-proxy ADDRESS] [--audit-log FILE]``: the web page, the REST API,
its docs and its metrics. Beyond loopback it starts only with access tokens or behind a trusted
proxy (busdx.api.access)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from busdx.data.preprocess import MAX_UPLOAD_MB, UPLOAD_SECONDS
from busdx.errors import BusdxError

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
    access = parser.add_argument_group(
        "access", "needed to serve beyond loopback: requests to /api and /metrics then need a "
        "token, or must come through the proxy (docs/deployment.md)")
    access.add_argument("--token-file", type=Path, metavar="FILE",
                        help="access tokens, one NAME:TOKEN per line (the name is the client in "
                             "the audit log); also read from $BUSDX_TOKENS. Clients send "
                             "'Authorization: Bearer TOKEN'")
    access.add_argument("--trusted-proxy", metavar="ADDRESS",
                        help="the address of a reverse proxy that authenticates users and "
                             "terminates TLS: only its requests are answered, and the user it "
                             "names in X-Forwarded-User is the client in the audit log")
    access.add_argument("--audit-log", type=Path, metavar="FILE",
                        help="append one JSON line per analysis (time, client, route, model "
                             "version, call; no image content or file name) to FILE; the lines "
                             "also go to the log")
    parser.set_defaults(func=run)


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """The Host names to accept: the loopback names, the bound address (unless it is every
    address), and those asked for."""
    names = list(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return list(dict.fromkeys(names + list(extra or [])))


def _bounded(kind: type, low: float, high: float, what: str):
    """An argparse type: a ``kind`` number from ``low`` to ``high``, else a message naming
    ``what`` it counts."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} from {low:g} to {high:g}, not {text!r}")
        return value

    return parse


_megabytes = _bounded(int, 1, 4096, "a whole number of MB")
_seconds = _bounded(float, 0.1, 3600, "seconds")


def access_for(args: argparse.Namespace):
    """Who may use the server; refuses to serve beyond loopback to everyone."""
    from busdx.api.access import Access, load_tokens

    tokens = load_tokens(args.token_file)
    access = Access(tokens=tokens, trusted_proxy=args.trusted_proxy)
    if access.open and args.host not in LOOPBACK_NAMES:
        raise BusdxError(
            f"serving on {args.host} would let anyone who can reach it analyse images: give "
            "access tokens (--token-file FILE or $BUSDX_TOKENS) or the address of a reverse "
            "proxy that authenticates users (--trusted-proxy ADDRESS); see docs/deployment.md")
    return access


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from busdx.api.access import audit_to_file
    from busdx.api.app import Limits, create_app
    from busdx.inference.models import Models

    access = access_for(args)
    if args.audit_log is not None:
        audit_to_file(args.audit_log)
    # Load before binding, so missing models are a clear error rather than a failed startup.
    models = Models.load(args.models)
    hosts = allowed_hosts(args.host, args.allowed_host)
    limits = Limits(max_upload_bytes=args.max_upload_mb * 2**20,
                    upload_seconds=args.upload_timeout)
    app = create_app(models=models, limits=limits, allowed_hosts=hosts, access=access)
    if access.tokens:
        log.info("%d access token(s): /api and /metrics need one", len(access.tokens))
    if access.trusted_proxy:
        log.info("answering only requests from the proxy at %s", access.trusted_proxy)
    if args.host not in LOOPBACK_NAMES:
        log.warning("serving on %s: requests must name one of the allowed hosts (add the name "
                    "users type with --allowed-host); put TLS in front (docs/deployment.md)",
                    args.host)
    log.info("answering requests for the host names %s", ", ".join(hosts))
    log.info("open http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0
