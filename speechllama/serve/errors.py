"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, whatever went wrong.

Handlers turn our ``APIError``, FastAPI's validation errors and Starlette's HTTP errors (404, 405)
into that shape, so an OpenAI client raises its usual exception types. ``Guard`` (an ASGI middleware
around the routes) checks the API key of /v1/*, /openapi.json and /docs before any routing (401
before 404), answers anything unexpected with a 500 that carries an error id (the traceback is logged
with that id on the server; the exception's text never goes to the client), and logs a client that
went away (mid-upload or while its audio decoded) in one line, answering nothing.
"""

from __future__ import annotations

import hmac
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("speechllama.serve")

# OpenAI's error types by HTTP status
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 500: "server_error", 503: "server_error"}
# the paths the API key guards (when the server has one): the API, and the schema that describes it
PROTECTED = ("/v1", "/openapi.json", "/docs")


class APIError(Exception):
    """A request the server answers with ``status`` and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


class ClientGone(Exception):
    """The client closed its connection before its answer was ready (its work has been dropped)."""


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    headers = dict(err.headers or {})
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), err.status,
                        headers=headers or None)


def key_error(authorization: str, api_key: str) -> APIError | None:
    """None when ``authorization`` is ``Bearer <api_key>``, else the 401 to answer."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return APIError(401, "missing API key: send the header 'Authorization: Bearer <key>' "
                             "(the server was started with --api-key)", None, "invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return APIError(401, "incorrect API key provided", None, "invalid_api_key")
    return None


def _protected(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


class Guard:
    """ASGI middleware in front of the routes: the API key, unexpected errors, clients gone."""

    def __init__(self, app, api_key: str | None = None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and _protected(scope["path"]):
            headers = dict(scope.get("headers") or [])
            err = key_error(headers.get(b"authorization", b"").decode("latin-1"), self.api_key)
            if err is not None:  # before routing: an unknown /v1 route is a 401 too, not a 404
                await error_response(err)(scope, receive, send)
                return
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except (ClientDisconnect, ClientGone) as e:
            log.info("client went away: %s %s (%s)", scope["method"], scope["path"],
                     str(e) or "mid-upload")
        except Exception as e:  # noqa: BLE001 - answered with an id, the traceback logged under it
            error_id = uuid.uuid4().hex[:12]
            log.error("error id %s: unexpected error on %s %s", error_id, scope["method"], scope["path"],
                      exc_info=e)
            if not started:
                err = APIError(500, f"internal server error (error id {error_id}: the server's log "
                                    "has the details)", None, "internal_error")
                await error_response(err)(scope, receive, send)


def install_handlers(app: FastAPI, api_key: str | None = None) -> None:
    """Every error the app can answer with, in OpenAI's shape; ``Guard`` around the routes."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return error_response(APIError(422, f"invalid request: {first.get('msg', err)}", param))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException):
        return error_response(APIError(err.status_code, str(err.detail)))

    app.add_middleware(Guard, api_key=api_key)
