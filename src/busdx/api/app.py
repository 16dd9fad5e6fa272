"""The FastAPI application: the REST API under /api, the web page at /, docs at /docs.

Models are loaded once (at startup, or passed in). There is no route that uploads or replaces
models, and no CORS middleware: the page is served by the same origin.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from busdx import DISCLAIMER, __version__
from busdx.api.access import Access, AccessControl
from busdx.api.metrics import Metrics, MetricsMiddleware
from busdx.data.preprocess import MAX_PIXELS, MAX_UPLOAD_MB, UPLOAD_SECONDS, ImageError
from busdx.inference.errors import InputError
from busdx.inference.models import Models

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# The page uses only its own files and data: URLs. /docs is exempt: Swagger UI's page has an
# inline script (its files are served from here, see _offline_docs).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Limits:
    """What one request may cost (docs/api.md, "Limits")."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS
    # uploads being received at once (each holds its bytes in memory until analysed); more
    # wait for a place, up to upload_seconds
    max_uploads: int = 8
    # seconds a client may take to send its upload, and an upload may wait for a place (a
    # stalled client holds memory and a place)
    upload_seconds: float = UPLOAD_SECONDS
    # the body of a JSON route (/api/lesion): a few views' numbers
    max_json_bytes: int = 64 * 1024


# an error answer quotes no more than this of what the client sent
ECHO_CHARS = 120


def create_app(
    models_dir: str | Path | None = None,
    *,
    models: Models | None = None,
    limits: Limits = Limits(),
    concurrency: int = 2,
    allowed_hosts: Sequence[str] | None = None,
    access: Access | None = None,
) -> FastAPI:
    """The app; ``models`` (already loaded) wins over ``models_dir`` (loaded at startup).
    ``allowed_hosts``: the Host names requests may carry (others get a 400: a page on another
    site cannot reach a loopback server through DNS rebinding); None checks none (tests, or a
    proxy in front that checks them). ``access``: who may use the API (busdx.api.access);
    None lets everyone who can connect."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.models = models if models is not None else Models.load(models_dir)
        # what /api/model serves of the card, cleaned once rather than on every request
        from busdx.evaluation.model_card import load_card

        app.state.served_card = served_card(load_card(app.state.models.directory))
        app.state.model_card_page = model_card_page(app.state.models.directory)
        # Created inside the running loop; bounds concurrent analyses (and so memory).
        app.state.limiter = anyio.CapacityLimiter(concurrency)
        # places for uploads being received (Limits.max_uploads)
        app.state.upload_slots = anyio.Semaphore(limits.max_uploads)
        yield

    from busdx.api.routers import analyze, dicom, lesion, meta
    from busdx.api.routers.meta import model_card_page, served_card

    swagger_dir = _swagger_ui_dir()
    app = FastAPI(
        title="busdx",
        version=__version__,
        description="Breast ultrasound decision support. " + DISCLAIMER,
        lifespan=lifespan,
        # FastAPI's own /docs and /redoc load their scripts from a CDN, blank on an offline
        # hospital network: /docs serves the copy of Swagger UI in fastapi-offline instead.
        docs_url=None if swagger_dir else "/docs",
        redoc_url=None,
    )
    if swagger_dir:
        _offline_docs(app, swagger_dir)
    app.state.limits = limits
    app.state.metrics = Metrics()

    @app.exception_handler(ImageError)
    async def input_error(request: Request, err: ImageError) -> JSONResponse:
        status = err.status if isinstance(err, InputError) else 422
        extra = err.extra if isinstance(err, InputError) else {}
        return JSONResponse({"detail": str(err), **extra}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, which may be huge or not valid JSON (NaN)
        errors = [{"loc": [str(part)[:ECHO_CHARS] for part in e.get("loc", ())],
                   "msg": str(e.get("msg", ""))[:ECHO_CHARS], "type": str(e.get("type", ""))}
                  for e in err.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        # The type only: a message could quote image content or a path.
        log.error("internal error on %s: %s", request.url.path, type(err).__name__)
        return JSONResponse({"detail": "internal error: the analysis failed"}, status_code=500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers["Content-Security-Policy"] = PAGE_CSP
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    app.add_middleware(JSONBodyLimit, limit=limits.max_json_bytes)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    # outermost last: every request is counted, refused ones included
    app.add_middleware(AccessControl, access=access or Access())
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.include_router(meta.router)
    app.include_router(meta.pages)
    app.include_router(analyze.router)
    app.include_router(lesion.router)
    app.include_router(dicom.router)
    # Last: the page and its files at /, after every /api route.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    return app


class JSONBodyLimit:
    """A POST body that is not a multipart upload (the JSON of /api/lesion, or anything sent in
    its place) is read here, up to ``limit`` bytes, before a route parses it: a larger one is a
    413 at once, without being read whole or parsed on the event loop. Uploads (multipart) have
    their own limits (busdx.api.upload)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"the request body is over the limit of "
                                            f"{self.limit // 1024} KB"}, status_code=413)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await too_large(scope, receive, send)
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _is_multipart(scope) -> bool:
    kind = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    return kind == b"multipart/form-data"


def _swagger_ui_dir() -> Path | None:
    """Swagger UI 5 (it reads FastAPI's OpenAPI 3.1) as shipped in the fastapi-offline package."""
    from importlib.util import find_spec

    spec = find_spec("fastapi_offline")
    directory = Path(spec.origin).parent / "static" if spec and spec.origin else None
    if directory is None or not (directory / "swagger-ui-bundle.js").is_file():
        log.info("fastapi-offline is not installed: /docs loads Swagger UI from its CDN")
        return None
    return directory


def _offline_docs(app: FastAPI, directory: Path) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs/static", StaticFiles(directory=directory), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="busdx API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
        )
