"""HTTP plumbing around the routes: JSON error bodies for every failure (``{"error": {"message", "type", "code"}}``,
or ``{"error": message}`` on KServe v2 routes), the observe middleware (request metrics, and the bearer-token check
on inference routes), and the ``BodySizeLimit`` ASGI middleware. :func:`install` puts them all on a FastAPI app.

Per-process settings (``LIMITS``) are read per request in these module-level functions, never captured when the
app is built: Serve pickles the app in the driver, while ``LIMITS`` must come from the replica's environment.
"""

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.api import ApiError
from serving.errors import DeadlineExceededError, OverloadedError
from serving.limits import LIMITS
from serving.metrics import NO_MODEL, metrics

log = logging.getLogger("optiserve")
RETRY_AFTER_S = "1"
MODEL_LABELS_KEY = "optiserve.model_labels"  # set in the ASGI scope by a handler, read by the metrics middleware
INFERENCE_PREFIXES = ("/v1/", "/v2/models")


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _is_kserve(request: Request) -> bool:
    return request.url.path == "/v2" or request.url.path.startswith("/v2/")


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response(kserve=_is_kserve(request))


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "request body is not valid JSON", "invalid_request_error", "invalid_json").response(
            kserve=_is_kserve(_)
        )
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{where}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ApiError(422, message, "invalid_request_error", "invalid_value").response(kserve=_is_kserve(_))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    code = codes.get(exc.status_code, "http_error")
    error = ApiError(exc.status_code, str(exc.detail), "invalid_request_error", code)
    return error.response(kserve=_is_kserve(request))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    error = ApiError(500, "internal server error", "server_error", "internal_error")
    return error.response(kserve=_is_kserve(request))


def not_found(name: str, served: list[str]) -> ApiError:
    return ApiError(
        404, f"model {name!r} is not served here; available: {served}", "invalid_request_error", "model_not_found"
    )


def run_error(exc: Exception) -> ApiError:
    """The HTTP answer for an exception raised while a model ran a request."""
    if isinstance(exc, OverloadedError):
        return ApiError(
            503, "server is overloaded; retry later", "overloaded_error", "overloaded", {"Retry-After": RETRY_AFTER_S}
        )
    if isinstance(exc, DeadlineExceededError):
        return ApiError(504, str(exc), "timeout_error", "queue_timeout")
    log.error("inference failed", exc_info=exc)
    return ApiError(500, "inference failed", "server_error", "inference_failed")


def _unauthorized(request: Request) -> Response | None:
    """The 401 answer for an inference route without the configured bearer token; None when the request may pass."""
    if not request.url.path.startswith(INFERENCE_PREFIXES) or LIMITS.authorized(request.headers.get("authorization")):
        return None
    return ApiError(
        401,
        "missing or invalid bearer token",
        "authentication_error",
        "invalid_api_key",
        {"WWW-Authenticate": "Bearer"},
    ).response(kserve=_is_kserve(request))


async def _observe(request: Request, call_next: Any) -> Response:
    """Count and time every request; check the bearer token on inference routes."""
    m = metrics()
    started = time.perf_counter()
    m.inflight.inc()
    status = 500
    try:
        response = _unauthorized(request)
        if response is None:
            response = await call_next(request)
        status = response.status_code
        return response
    finally:
        m.inflight.dec()
        labels = request.scope.get(MODEL_LABELS_KEY, NO_MODEL)
        route = _route_of(request)
        m.requests.labels(**labels, route=route, code=str(status)).inc()
        m.request_duration.labels(**labels, route=route).observe(time.perf_counter() - started)


class BodySizeLimit:
    """ASGI middleware: refuse bodies over the limit with a JSON 413, by Content-Length up front and otherwise by
    counting the bytes as they stream in (chunked uploads have no Content-Length). The body is read here, at
    most ``limit`` bytes of it, and replayed to the app.

    The limit is read from ``LIMITS`` per request, not stored here: Serve pickles the FastAPI app (with its
    middleware arguments) in the driver, while ``LIMITS`` must come from the replica's environment."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = LIMITS.max_body_bytes
        too_large = ApiError(
            413, f"request body is larger than {limit} bytes", "invalid_request_error", "body_too_large"
        ).response(kserve=str(scope.get("path", "")).startswith("/v2"))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await too_large(scope, receive, send)
            return
        chunks, size, message = [], 0, {"type": "http.request", "more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # client went away: let the app see it
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_large(scope, receive, send)
                return
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )


def _replay(messages: list[dict], then: Any = None) -> Any:
    """An ASGI ``receive`` that yields ``messages`` first, then defers to ``then`` (e.g. for disconnects)."""
    pending = list(messages)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


def install(api: FastAPI) -> None:
    """Register the JSON error handlers and the middlewares on ``api``; ``BodySizeLimit`` ends up outermost, so it
    sees the body before the observe middleware and the routes do."""
    api.exception_handler(ApiError)(_api_error)
    api.exception_handler(RequestValidationError)(_validation_error)
    api.exception_handler(StarletteHTTPException)(_http_error)
    api.exception_handler(Exception)(_unexpected_error)
    api.middleware("http")(_observe)
    api.add_middleware(BodySizeLimit)
