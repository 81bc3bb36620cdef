"""The one ASGI app of `exo-celery serve`: JSON API, dashboard, static assets and `/metrics`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import (
    ConfigError,
    ConflictError,
    ExoError,
    GraphValidationError,
    NotFoundError,
    StateError,
    TriggerError,
)
from ..settings import Settings, load_settings
from . import api, dashboard
from .auth import CSRF_COOKIE, CSRF_HEADER, KEY_HEADER, KeyRing, host_is_loopback
from .context import Context
from .metrics import make_registry

STATIC = Path(__file__).parent / "static"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def create_app(settings: Settings | None = None, ring: KeyRing | None = None, flower_url: str | None = None) -> FastAPI:
    """The app over the ledger `settings` name (default: the environment); `ring` defaults to `EXO_API_KEY`."""
    settings = settings or load_settings()
    ring = ring if ring is not None else KeyRing.from_settings(settings)
    app = FastAPI(
        title="exo_celery",
        summary="Exosphere's state-manager v0 API over an exo_celery ledger, and a dashboard",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = Context(settings, ring, flower_url or settings.flower_url)
    registry = make_registry(settings)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Auth off means loopback only: refuse other Host names too (a DNS-rebinding page cannot drive us).
        if not ring.enabled and not host_is_loopback(request.headers.get("host")):
            return JSONResponse({"detail": "this server has no API key set and answers loopback hosts only"}, 403)
        # A request without x-api-key is a browser's: unsafe methods need the double-submit CSRF header.
        if request.method in _UNSAFE and KEY_HEADER not in request.headers and request.url.path != "/login":
            token = request.headers.get(CSRF_HEADER)
            if not token or token != request.cookies.get(CSRF_COOKIE):
                return JSONResponse({"detail": f"missing {KEY_HEADER} header, or CSRF token ({CSRF_HEADER})"}, 403)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    statuses: list[tuple[type[ExoError], int]] = [
        (NotFoundError, 404),
        (GraphValidationError, 422),
        (TriggerError, 400),
        (StateError, 409),
        (ConflictError, 409),
        (ConfigError, 500),
        (ExoError, 400),
    ]

    @app.exception_handler(ExoError)
    async def exo_error(_request: Request, exc: Exception) -> Response:
        code = next(code for kind, code in statuses if isinstance(exc, kind))
        if isinstance(exc, GraphValidationError):
            detail = {"validation_status": "INVALID", "validation_errors": exc.errors, "message": str(exc)}
            return JSONResponse({"detail": detail}, code)
        return JSONResponse({"detail": str(exc)}, code)

    @app.exception_handler(dashboard.LoginRequired)
    async def login_required(_request: Request, _exc: Exception) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus text format; with keys on it needs one (x-api-key, or `Authorization: Bearer <key>`)."""
        bearer = request.headers.get("authorization", "")
        key = request.headers.get(KEY_HEADER) or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
        api.principal(request, key)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
