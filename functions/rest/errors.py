"""Every error answers JSON `{"error": {"type", "message", "details"}}`; never a stack trace."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    NotFound,
    PermanentError,
    PluginFailed,
    SluiceError,
    TooLarge,
    TransientError,
    Unauthorized,
)

log = structlog.get_logger("sluice.rest")

_STATUS: list[tuple[type[SluiceError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (PluginFailed, 502),
    (TooLarge, 413),
    (PermanentError, 422),  # InvalidInput and PoisonMessage included
    (TransientError, 503),
]


def error_body(error_type: str, message: str, details: Any = None) -> dict:
    return {"error": {"type": error_type, "message": message, "details": details or {}}}


def status_for(exc: SluiceError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SluiceError)
    async def _sluice(request: Request, exc: SluiceError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(error_body(exc.error_type, exc.message, exc.details), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        message = f"{first['field'] or 'request'}: {first['message']}"
        return JSONResponse(error_body("invalid_input", message, {"errors": errors}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("rest.unhandled", path=request.url.path, method=request.method)
        return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)
