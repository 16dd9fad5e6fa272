"""Who may use the API, and a record of every analysis.

Two ways to let clients in, for a server reachable beyond loopback:

- **access tokens**: a client sends ``Authorization: Bearer TOKEN``; a request to ``/api/``
  (health and readiness aside) or ``/metrics`` without a valid token gets a 401. Tokens are
  read from a file (one ``NAME:TOKEN`` per line; ``#`` comments) or an environment variable,
  never from the command line, where other users of the machine could read them. The name is
  the client in the audit log.
- **a trusted proxy**: a reverse proxy in front authenticates users (and terminates TLS);
  requests that do not come from its address get a 401, and the user it names in
  ``X-Forwarded-User`` is the client in the audit log.

The audit log has one line per analysis, as JSON: time, client, route, model version, call.
It holds no image content and no file name.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from busdx.errors import BusdxError

log = logging.getLogger(__name__)
audit_log = logging.getLogger("busdx.audit")

TOKEN_ENV = "BUSDX_TOKENS"  # NAME:TOKEN[,NAME:TOKEN...]
MIN_TOKEN_CHARS = 16
# open to anyone who can connect: an orchestrator's probes, the page itself and its files
OPEN_PATHS = ("/api/health", "/api/ready")
PROTECTED_PREFIXES = ("/api/", "/metrics")
USER_HEADER = b"x-forwarded-user"


@dataclass(frozen=True)
class Access:
    """``tokens``: name -> token; ``trusted_proxy``: the proxy's address. Neither: open (a
    loopback server)."""

    tokens: dict[str, str] = field(default_factory=dict)
    trusted_proxy: str | None = None

    @property
    def open(self) -> bool:
        return not self.tokens and self.trusted_proxy is None

    def client(self, scope) -> str | None:
        """Who sent the request: a token's name, the proxy's user, or None (refused)."""
        peer = (scope.get("client") or ("", 0))[0]
        headers = dict(scope.get("headers") or [])
        if self.trusted_proxy is not None:
            if peer != self.trusted_proxy:
                return None
            user = headers.get(USER_HEADER, b"").decode("latin-1").strip()
            if not self.tokens:
                return f"proxy:{user or 'unnamed'}"
        if self.tokens:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            for name, known in self.tokens.items():
                if hmac.compare_digest(token.strip().encode(), known.encode()):
                    return name
            return None
        return peer or "unknown"


def parse_tokens(text: str, source: str) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = f"token-{len(tokens) + 1}", line
        name, token = name.strip(), token.strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise BusdxError(f"{source}, entry {number}: a token must be at least "
                             f"{MIN_TOKEN_CHARS} characters (python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))' makes one)")
        if name in tokens:
            raise BusdxError(f"{source}: the name {name!r} is given twice")
        tokens[name] = token
    return tokens


def load_tokens(path: Path | None) -> dict[str, str]:
    """Tokens from ``path`` (which should be readable by its owner only) and $BUSDX_TOKENS."""
    tokens: dict[str, str] = {}
    if path is not None:
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise BusdxError(f"cannot read the token file {path}: {err.strerror or err}") \
                from err
        if mode & 0o077:
            log.warning("%s can be read by other users of this machine: chmod 600 it", path)
        tokens.update(parse_tokens(text, str(path)))
    env = os.environ.get(TOKEN_ENV, "")
    if env.strip():
        for name, token in parse_tokens(env, f"${TOKEN_ENV}").items():
            if name in tokens:
                raise BusdxError(f"${TOKEN_ENV} names {name!r}, as the token file does")
            tokens[name] = token
    return tokens


class AccessControl:
    """ASGI middleware: a protected route without a valid client gets a 401; the client is put
    in the scope (``state["client"]``) for the audit log."""

    def __init__(self, app, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        protected = path.startswith(PROTECTED_PREFIXES) and path not in OPEN_PATHS
        client = self.access.client(scope)
        scope.setdefault("state", {})["client"] = client or "refused"
        if protected and client is None:
            from fastapi.responses import JSONResponse

            answer = JSONResponse(
                {"detail": "an access token is needed: send 'Authorization: Bearer TOKEN'"
                 if self.access.tokens else "requests must come through the trusted proxy"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def audit(request, route: str, model_version: str, call: str) -> None:
    """One line for an analysis: no image content, no file name."""
    client = getattr(request.state, "client", None) or "unknown"
    audit_log.info(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client": client,
        "route": route, "model_version": model_version, "call": call}))
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.analyses.labels(call=call).inc()


def audit_to_file(path: Path) -> None:
    """Also append the audit lines to ``path``."""
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        raise BusdxError(f"cannot write the audit log {path}: {err.strerror or err}") from err
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
