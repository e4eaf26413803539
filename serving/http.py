"""HTTP plumbing around the routes: every failure answered as JSON through the error catalogue
(:mod:`serving.errors`), body parsing for the JSON routes, and the :class:`Gate` ASGI
middleware (request metrics, the bearer-token check on inference routes, the body's size and time limits).
:func:`install` puts them on a FastAPI app.

Per-process settings (``LIMITS``) are read per request in these module-level functions, never captured when the
app is built: Serve pickles the app in the driver, while ``LIMITS`` must come from the replica's environment.
"""

import asyncio
import logging
import time
from collections.abc import MutableMapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelpkg.errors import OptiserveError
from serving.errors import (
    BodyTimeoutError,
    BodyTooLargeError,
    HttpError,
    InvalidHeaderError,
    InvalidJsonError,
    InvalidValueError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    TooManyInputsError,
    UnauthorizedError,
    error_response,
)
from serving.jsonbody import MAX_JSON_CONTAINERS, json_containers, shorten
from serving.limits import LIMITS
from serving.metrics import NO_MODEL, metrics
from serving.tracing import end_request, tracing

log = logging.getLogger("optiserve")
MODEL_LABELS_KEY = "optiserve.model_labels"  # set in the ASGI scope by a handler, read by the metrics middleware
PACKAGE_HEADERS_KEY = "optiserve.package_headers"  # likewise: the headers naming the package that answers
SPAN_KEY = "optiserve.span"  # the request's trace span (None when tracing is off), for the handlers
INFERENCE_PREFIXES = ("/v1/", "/v2/models", "/rerank")
Body = TypeVar("Body", bound=BaseModel)


def answered_by(scope: MutableMapping[str, Any], runner: Any) -> None:
    """Note in the ASGI scope which model package answers this request: its metrics are labelled with it and the
    response names it (``OptiServe-Model``, ``OptiServe-Model-Version``, ``OptiServe-Package``)."""
    scope[MODEL_LABELS_KEY] = runner.labels
    scope[PACKAGE_HEADERS_KEY] = runner.response_headers


def _kserve_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _is_kserve(request: Request) -> bool:
    return _kserve_path(request.url.path)


async def _domain_error(request: Request, exc: OptiserveError) -> Response:
    return error_response(exc, kserve=_is_kserve(request))


def validation_answer(errors: Sequence[Any]) -> OptiserveError:
    """The answer for a request body that failed validation: 400 for JSON that does not parse, 413 for too many
    inputs (as on the KServe routes), else 422 naming the first problem."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return InvalidJsonError("request body is not valid JSON")
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{where}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    if first.get("type") == TooManyInputsError.code:
        return TooManyInputsError(message)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return InvalidValueError(message)


def parse_body(model: type[Body], body: bytes, max_containers: int = MAX_JSON_CONTAINERS) -> Body:
    """Validate a JSON body against ``model`` straight from its bytes (pydantic's own parser), after a structural
    check that costs nothing: a body of millions of nested arrays is refused before anything parses it (parsing
    one would hold the event loop for seconds). ``max_containers``: more for a route whose items may be objects
    (a reranker's documents)."""
    containers = json_containers(body, max_containers)
    if containers > max_containers:
        raise InvalidValueError(
            f"body: a request holds at most {max_containers} JSON arrays and objects, this one {containers}"
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_answer(exc.errors(include_input=False)) from None


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return error_response(validation_answer(exc.errors()), kserve=_is_kserve(request))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    kinds = {400: InvalidJsonError, 404: NotFoundError, 405: MethodNotAllowedError, 413: BodyTooLargeError}
    kind = kinds.get(exc.status_code)
    error = kind(str(exc.detail)) if kind else HttpError(str(exc.detail), exc.status_code)
    return error_response(error, kserve=_is_kserve(request))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(OptiserveError("unhandled error"), kserve=_is_kserve(request))


def not_found(name: str, served: list[str]) -> ModelNotFoundError:
    return ModelNotFoundError(f"model {shorten(name)!r} is not served here; available: {served}")


def _unauthorized(scope: dict, headers: dict[bytes, bytes]) -> Response | None:
    """The 401 answer for an inference route without the configured bearer token; None when the request may pass."""
    path = str(scope.get("path", ""))
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if not path.startswith(INFERENCE_PREFIXES) or LIMITS.authorized(authorization or None):
        return None
    return error_response(UnauthorizedError("missing or invalid bearer token"), kserve=_kserve_path(path))


CLIENT_GONE = 499  # what the metrics record for a client that went away before its answer (as nginx and Ray do)
MAX_LENGTH_DIGITS = 18  # a Content-Length longer than this is not a length anyone sends


class _ClientGoneError(Exception):
    """The client disconnected while its body was being read."""


class _TooLargeError(Exception):
    """The body grew past the size limit while it was read."""


class Gate:
    """ASGI middleware in front of every route. It counts and times every request (its status, or 499 when the
    client went away first); refuses inference routes without the bearer token (401); and reads the body here:
    over the size limit is a JSON 413 (by ``Content-Length`` up front, else by counting while a chunked body
    streams in), and a body not complete within ``body_timeout_s`` is a JSON 408, so a slow or stalled upload
    holds a connection for a bounded time. The body is replayed to the app.

    Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task or stream per request. Limits are read from
    ``LIMITS`` per request, not stored here: Serve pickles the app (with its middleware) in the driver, while
    ``LIMITS`` must come from the replica's environment."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = metrics()
        started = time.perf_counter()
        status = 0

        async def send_recorded(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if package_headers := scope.get(PACKAGE_HEADERS_KEY):
                    message["headers"] = [*message.get("headers", []), *package_headers]
            await send(message)

        m.inflight.inc()
        headers = dict(scope.get("headers") or [])
        span = scope[SPAN_KEY] = _request_span(scope, headers)
        try:
            refusal = _unauthorized(scope, headers) or _declared_too_large(scope, headers)
            if refusal is not None:
                await refusal(scope, receive, send_recorded)
                return
            try:
                body = await _read_body(receive)
            except _ClientGoneError:
                status = CLIENT_GONE
                return
            except (TimeoutError, _TooLargeError) as exc:
                await _body_refusal(scope, exc)(scope, receive, send_recorded)
                return
            replay = _replay([{"type": "http.request", "body": body, "more_body": False}], receive)
            await self.app(scope, replay, send_recorded)
        except asyncio.CancelledError:  # Serve cancels a request whose client disconnected
            status = status or CLIENT_GONE
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            _record(scope, status or CLIENT_GONE, time.perf_counter() - started, span)


def _record(scope: dict, status: int, seconds: float, span: Any) -> None:
    """Count and time a request that was answered with ``status`` (labelled with its model and route) and end
    its trace span."""
    m = metrics()
    m.inflight.dec()
    labels = scope.get(MODEL_LABELS_KEY, NO_MODEL)
    route = getattr(scope.get("route"), "path", "unmatched")
    m.requests.labels(**labels, route=route, code=str(status)).inc()
    m.request_duration.labels(**labels, route=route).observe(seconds)
    if span is not None:
        span.update_name(f"{scope.get('method', '')} {route}")
        end_request(span, status, {"http.route": route, **span_labels(labels)})


def _request_span(scope: dict, headers: dict[bytes, bytes]) -> Any:
    """The request's server span (None when tracing is off), continuing an incoming ``traceparent``."""
    trace = tracing()
    if not trace.enabled:
        return None
    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers.items()}
    attributes = {"http.request.method": scope.get("method", ""), "url.path": scope.get("path", "")}
    if request_id := carrier.get("x-request-id"):
        attributes["optiserve.request_id"] = request_id
    return trace.start_request(f"{scope.get('method', '')} {scope.get('path', '')}", carrier, attributes)


def span_labels(labels: dict[str, str]) -> dict[str, str]:
    """The model labels of a request's metrics, as span attributes (none for a request that reached no model)."""
    return {f"optiserve.{'model_version' if k == 'version' else k}": v for k, v in labels.items() if v}


def _declared_too_large(scope: dict, headers: dict[bytes, bytes]) -> Response | None:
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    length = declared.strip()
    if length.isdigit() and len(length) <= MAX_LENGTH_DIGITS and int(length) <= LIMITS.max_body_bytes:
        return None
    if not length.isdigit():
        error = InvalidHeaderError("Content-Length is not a number of bytes")
        return error_response(error, kserve=_kserve_path(str(scope.get("path", ""))))
    return _body_refusal(scope, _TooLargeError())


def _body_refusal(scope: dict, exc: Exception) -> Response:
    kserve = _kserve_path(str(scope.get("path", "")))
    if isinstance(exc, _TooLargeError):
        limit = LIMITS.max_body_bytes
        error: OptiserveError = BodyTooLargeError(f"request body is larger than {limit} bytes")
    else:
        error = BodyTimeoutError(f"request body was not complete within {LIMITS.body_timeout_s:g} s")
    return error_response(error, kserve=kserve)


async def _read_body(receive: Any) -> bytes:
    """The whole body within the size and time limits; raises _TooLargeError, TimeoutError, _ClientGoneError."""
    limit = LIMITS.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(LIMITS.body_timeout_s):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGoneError
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _TooLargeError
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
    """Register the JSON error handlers and the :class:`Gate` middleware on ``api``."""
    api.exception_handler(OptiserveError)(_domain_error)
    api.exception_handler(RequestValidationError)(_validation_error)
    api.exception_handler(StarletteHTTPException)(_http_error)
    api.exception_handler(Exception)(_unexpected_error)
    api.add_middleware(Gate)
