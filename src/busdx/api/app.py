"""The FastAPI application: the REST API under /api, the web page at /, docs at /docs.

Models are loaded once (at startup, or passed in). There is no route that uploads or replaces
models, and no CORS middleware: the page is served by the same origin.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from busdx import DISCLAIMER, __version__
from busdx.data.preprocess import MAX_PIXELS, ImageError
from busdx.inference.errors import InputError
from busdx.inference.models import Models

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
# The page uses only its own files and data: URLs; /docs loads Swagger UI from its CDN instead.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS


def create_app(
    models_dir: str | Path | None = None,
    *,
    models: Models | None = None,
    limits: Limits = Limits(),
    concurrency: int = 2,
) -> FastAPI:
    """The app; ``models`` (already loaded) wins over ``models_dir`` (loaded at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.models = models if models is not None else Models.load(models_dir)
        # Created inside the running loop; bounds concurrent analyses (and so memory).
        app.state.limiter = anyio.CapacityLimiter(concurrency)
        yield

    from busdx.api.routers import analyze, meta

    app = FastAPI(
        title="busdx",
        version=__version__,
        description="Breast ultrasound decision support. " + DISCLAIMER,
        lifespan=lifespan,
    )
    app.state.limits = limits

    @app.exception_handler(ImageError)
    async def input_error(request: Request, err: ImageError) -> JSONResponse:
        status = err.status if isinstance(err, InputError) else 422
        return JSONResponse({"detail": str(err)}, status_code=status)

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

    app.include_router(meta.router)
    app.include_router(analyze.router)
    # Last: the page and its files at /, after every /api route.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    return app
