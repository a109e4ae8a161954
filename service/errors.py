"""Domain exceptions and the one table that maps them to HTTP answers {"error", "detail"}.

Every 4xx and 5xx the app sends has that body: the domain errors below, routing's 404 and 405, FastAPI's
own validation errors (path parameters) and anything unexpected (500, the traceback logged, never sent).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

log = logging.getLogger("neumeta.service")


class ServiceError(Exception):
    code = "internal_error"
    headers: dict[str, str] = {}  # noqa: RUF012 (read-only class defaults)

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if headers is not None:
            self.headers = {**type(self).headers, **headers}


class BadRequest(ServiceError):
    code = "bad_request"


class InvalidRequest(ServiceError):
    code = "invalid_request"


class Unauthorized(ServiceError):
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class ModelNotFound(ServiceError):
    code = "not_found"


class PreconditionFailed(ServiceError):
    code = "precondition_failed"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class RangeNotSatisfiable(ServiceError):
    code = "range_not_satisfiable"


class NotReady(ServiceError):
    code = "not_ready"
    headers = {"Retry-After": "5"}  # noqa: RUF012


class Overloaded(ServiceError):
    code = "overloaded"
    headers = {"Retry-After": "2"}  # noqa: RUF012


class SynthesisTimeout(ServiceError):
    code = "timeout"


STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    InvalidRequest: 422,
    Unauthorized: 401,
    ModelNotFound: 404,
    PreconditionFailed: 412,
    UnsupportedMediaType: 415,
    RangeNotSatisfiable: 416,
    NotReady: 503,
    Overloaded: 503,
    SynthesisTimeout: 504,
    ServiceError: 500,
}
ROUTING = {404: "not_found", 405: "method_not_allowed"}  # the errors Starlette's router raises


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _domain(request: Request, exc: ServiceError) -> JSONResponse:
        status = next(s for cls, s in STATUS.items() if isinstance(exc, cls))
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        return JSONResponse(error_body(exc.code, exc.detail), status_code=status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _routing(request: Request, exc: HTTPException) -> JSONResponse:
        """Routing's 404 and 405 (and any HTTPException a dependency raises), in the envelope."""
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            detail = f"no route {request.url.path}: the routes are listed at /docs (OpenAPI: /openapi.json)"
        elif exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed(request))
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
        else:
            detail = str(exc.detail)
        code = ROUTING.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, detail), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        """What FastAPI itself validates (the size request is validated by service/schemas.py)."""
        fields = "; ".join(_describe(e) for e in exc.errors())
        return JSONResponse(error_body("invalid_request", f"{fields} (the parameters: /docs)"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "the server failed; the error is logged"), status_code=500)


def allowed(request: Request) -> list[str]:
    """Every method some route serves at this path, asked of each route (Starlette's 405 names only the
    first route's methods)."""

    def serves(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    methods = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") if serves(m)]
    return [*methods[:1], "HEAD", *methods[1:]] if "GET" in methods else methods  # HEAD: as GET (middleware)


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    where = ".".join(str(p) for p in loc[1:]) if isinstance(loc, tuple | list) else ""
    msg = str(error.get("msg")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
