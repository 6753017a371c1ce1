"""Authentication before the body is read (trusted side: the REST edge, before any route runs).

`AuthenticateFirst` is a pure ASGI middleware: every HTTP request under `/v1/` except the routes
that need no key (`KEYLESS`) must carry a valid key in `Authorization: Bearer <key>`, or it is
answered 401 with the usual error envelope (functions/rest/errors.py) before one byte of its body
is read, so an anonymous caller cannot make the server receive, parse or buffer an upload. On
success the caller's `Principal` is left in `scope["state"]`, where `deps.authenticated` takes it
instead of authenticating twice. Roles are checked later, per route, by `deps.ScopedNamespace`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from events.errors import SluiceError
from functions.records.tenancy import Tenancy
from functions.rest.deps import PRINCIPAL
from functions.rest.errors import error_body, status_for

PROTECTED = "/v1/"
# Routes that need no key: health (details only for the admin key, checked by the route), the
# local object store's presigned URLs (they carry their own signature) and the API docs.
KEYLESS_EXACT = frozenset({"/v1/health", "/v1/health/", "/v1/openapi.json", "/v1/docs"})
KEYLESS_PREFIXES = ("/v1/objects/", "/v1/docs/")


def needs_key(path: str) -> bool:
    if not path.startswith(PROTECTED):
        return False
    return path not in KEYLESS_EXACT and not path.startswith(KEYLESS_PREFIXES)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text.lower().startswith("bearer ") else None
    return None


class AuthenticateFirst:
    """Refuse keyless or bad-key requests under /v1/ before the app (or its body) is reached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        tenancy: Tenancy = scope["app"].state.tenancy
        try:
            principal = await tenancy.authenticate(bearer_token(scope))
        except SluiceError as exc:  # 401, or 503 when the catalog cannot answer
            status = status_for(exc)
            headers = {"WWW-Authenticate": "Bearer", "Connection": "close"} if status == 401 else None
            response = JSONResponse(error_body(exc.error_type, exc.message, exc.details), status_code=status, headers=headers)
            await response(scope, receive, send)  # sends the answer; never calls `receive`
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)


__all__ = ["AuthenticateFirst", "needs_key"]
