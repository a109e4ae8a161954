"""Domain exceptions and the one table that maps them to HTTP answers {"error", "detail"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("neumeta.service")


class ServiceError(Exception):
    code = "internal_error"
    headers: dict[str, str] = {}  # noqa: RUF012 (read-only class defaults)

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(ServiceError):
    code = "invalid_request"


class Unauthorized(ServiceError):
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class ModelNotFound(ServiceError):
    code = "not_found"


class NotReady(ServiceError):
    code = "not_ready"
    headers = {"Retry-After": "5"}  # noqa: RUF012


class Overloaded(ServiceError):
    code = "overloaded"
    headers = {"Retry-After": "2"}  # noqa: RUF012


class SynthesisTimeout(ServiceError):
    code = "timeout"


STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 422,
    Unauthorized: 401,
    ModelNotFound: 404,
    NotReady: 503,
    Overloaded: 503,
    SynthesisTimeout: 504,
    ServiceError: 500,
}


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _domain(request: Request, exc: ServiceError) -> JSONResponse:
        status = next(s for cls, s in STATUS.items() if isinstance(exc, cls))
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        return JSONResponse(error_body(exc.code, exc.detail), status_code=status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        synth = getattr(request.app.state, "synth", None)
        hint = (
            f"give exactly one of ratio, width or max_params. {synth.request_hint()}"
            if synth is not None
            else "see /docs for the valid parameters"
        )
        fields = "; ".join(_describe(e) for e in exc.errors())
        return JSONResponse(error_body("invalid_request", f"{fields}. {hint}"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "the server failed; the error is logged"), status_code=500)


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    where = ".".join(str(p) for p in loc[1:]) if isinstance(loc, tuple | list) else ""
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))
