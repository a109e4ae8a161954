"""Domain exceptions and the one table that maps them to HTTP answers {"error", "detail"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("neumeta.service")


class ServiceError(Exception):
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(ServiceError):
    code = "invalid_request"


class NotReady(ServiceError):
    code = "not_ready"


STATUS: dict[type[ServiceError], int] = {InvalidRequest: 422, NotReady: 503, ServiceError: 500}


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _domain(request: Request, exc: ServiceError) -> JSONResponse:
        status = next(s for cls, s in STATUS.items() if isinstance(exc, cls))
        return JSONResponse(error_body(exc.code, exc.detail), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        hint = getattr(request.app.state, "request_hint", "see /docs for the valid parameters")
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body("invalid_request", f"{fields}. {hint}"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "the server failed; the error is logged"), status_code=500)
