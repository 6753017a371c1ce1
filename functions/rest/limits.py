"""Request body limits, applied before a route parses anything (the REST edge, trusted side).

`LimitRequestBody` is a pure ASGI middleware. Each HTTP request gets a limit:

- the multipart model upload (`POST /v1/namespaces/{ns}/models`) streams an archive to disk and
  checks its own size as it goes; here it gets `models_max_archive_bytes` plus the room its form
  fields take (`FORM_OVERHEAD_BYTES`), so it is never cut by the JSON limit;
- the local object store's presigned PUT (`PUT /v1/objects/...`) has none here: its URL carries
  its own signed limit, which the store's route enforces (infra/objectstore/local.py);
- everything else, JSON bodies above all: `max_request_bytes` (default 1 MiB).

A request whose Content-Length is over its limit is answered 413 at once, with the error envelope
of functions/rest/errors.py and `Connection: close`, before one byte of its body is read. A body
without a Content-Length (chunked) is counted as it arrives; at the first byte over the limit the
route's reading fails, whatever the route answers is dropped, and the client gets the same 413.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.errors import TooLarge
from functions.rest.errors import error_body
from functions.rest.models import FORM_OVERHEAD_BYTES

SETTING = "SLUICE_MAX_REQUEST_BYTES"


class BodyTooLarge(TooLarge):
    """Raised into the route that reads past its request's limit (the middleware answers 413)."""


# (method, path pattern, the limit from the settings, the setting that sets it); the first match
# wins. A limit of None means the route enforces its own.
ROUTE_LIMITS: list[tuple[str, re.Pattern[str], Callable[[Any], int | None], str]] = [
    ("POST", re.compile(r"^/v1/namespaces/[^/]+/models/?$"),
     lambda settings: settings.models_max_archive_bytes + FORM_OVERHEAD_BYTES, "SLUICE_MODELS_MAX_ARCHIVE_BYTES"),
    ("PUT", re.compile(r"^/v1/objects/"), lambda settings: None, "the presigned URL's own limit"),
]


def limit_for(method: str, path: str, settings: Any) -> tuple[int | None, str]:
    """The body limit of a request, and the setting that sets it."""
    for route_method, pattern, limit, setting in ROUTE_LIMITS:
        if method == route_method and pattern.match(path):
            return limit(settings), setting
    return settings.max_request_bytes, SETTING


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _too_large(limit: int, setting: str, content_length: int | None) -> TooLarge:
    amount = f"{content_length} bytes (Content-Length)" if content_length is not None else f"more than {limit} bytes"
    details: dict[str, Any] = {"limit_bytes": limit, "setting": setting}
    if content_length is not None:
        details["content_length"] = content_length
    return BodyTooLarge(f"the request body is {amount}; the limit is {limit} bytes ({setting})", details=details)


async def _refuse(error: TooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(error_body(error.error_type, error.message, error.details), status_code=413,
                            headers={"Connection": "close"})
    await response(scope, receive, send)  # sends the answer; never calls `receive`


class LimitRequestBody:
    """Refuse request bodies over their limit (see the module doc) before the route parses them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = limit_for(scope["method"], scope["path"], scope["app"].state.platform.settings)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(_too_large(limit, setting, declared), scope, receive, send)
            return

        received = 0
        exceeded: TooLarge | None = None
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = _too_large(limit, setting, None)
                    raise exceeded
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded is not None:
                return  # the route's answer to a body it could not read is replaced by the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if exceeded is None or started:
                raise
        if exceeded is not None and not started:
            await _refuse(exceeded, scope, receive, send)


__all__ = ["BodyTooLarge", "LimitRequestBody", "limit_for"]
