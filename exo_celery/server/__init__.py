"""`exo-celery serve`: the HTTP API (Exosphere's state-manager v0 routes and ours), the dashboard and `/metrics`.

FastAPI is imported here and nowhere else in exo_celery.
"""

from __future__ import annotations

import logging
import socket

from ..settings import Settings, load_settings
from .app import create_app
from .auth import KeyRing, check_bind

log = logging.getLogger("exo_celery.server")


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, log_level: str = "info") -> None:
    """Serve until interrupted; refuses a non-loopback `host` while `EXO_API_KEY` is unset (ConfigError)."""
    import uvicorn

    settings = settings or load_settings()
    ring = KeyRing.from_settings(settings)
    check_bind(host, ring)
    app = create_app(settings, ring)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    auth = f"API keys on ({len(ring.keys)} key(s))" if ring.enabled else "no API key: loopback only"
    print(f"exo-celery serve: listening on http://{shown}:{bound} ({auth})", flush=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])


__all__ = ["create_app", "serve"]
