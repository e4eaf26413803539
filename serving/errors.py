"""The error catalogue of the HTTP layer and the one mapping from an error to its answer.

Every error a client can get is an :class:`~modelpkg.errors.OptiserveError` subclass that declares its status,
type and code once (the core's package and queue errors, the pipeline's prompt and width errors, and the
request errors below). :func:`error_response` builds the body from them: OpenAI-style
``{"error": {"message", "type", "code"}}``, or ``{"error": message}`` on KServe v2 routes, as that protocol
specifies. HAProxy's own error pages (``serving/haproxy-local``) are checked against :func:`catalogue` by the
tests. Nothing here imports a protocol module.
"""

from __future__ import annotations

import importlib
import logging
from types import MappingProxyType
from typing import Any

import orjson
from starlette.responses import Response

from modelpkg.errors import OptiserveError

log = logging.getLogger("optiserve")
# Modules that declare errors besides this one and modelpkg.errors.
DECLARING_MODULES = ("modelpkg.pipeline", "modelpkg.settings", "serving.control")


class RequestError(OptiserveError):
    """A request the server will not run as sent (400 unless a subclass says otherwise)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    public_message = None


class InvalidJsonError(RequestError):
    code = "invalid_json"


class InvalidValueError(RequestError):
    status = 422
    code = "invalid_value"


class TooManyInputsError(RequestError):
    status = 413
    code = "too_many_inputs"


class ModelNotFoundError(RequestError):
    status = 404
    code = "model_not_found"


class ModelRequiredError(RequestError):
    code = "model_required"


class WrongInputError(RequestError):
    """Text sent to a model that takes tensors."""

    code = "wrong_input"


class WrongTaskError(RequestError):
    code = "wrong_task"


class InputTooLongError(RequestError):
    status = 422
    code = "input_too_long"


class InvalidInferRequestError(RequestError):
    """A KServe v2 infer request that does not parse or does not fit the model."""

    code = "invalid_infer_request"


class InvalidHeaderError(RequestError):
    code = "invalid_header"


class BodyTooLargeError(RequestError):
    status = 413
    code = "body_too_large"


class BodyTimeoutError(RequestError):
    status = 408
    code = "body_timeout"
    headers = MappingProxyType({"Connection": "close"})


class NotFoundError(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowedError(RequestError):
    status = 405
    code = "method_not_allowed"


class HttpError(RequestError):
    """Any other HTTP-level refusal from the framework, with its own status."""

    code = "http_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnauthorizedError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    headers = MappingProxyType({"WWW-Authenticate": "Bearer"})


class InferenceFailedError(OptiserveError):
    """A model call failed for a reason the client cannot change (logged with its traceback)."""

    code = "inference_failed"
    public_message = "inference failed"


# -- answered by HAProxy itself (serving/haproxy-local writes these pages); never raised in Python ---------------


class IngressBadRequestError(RequestError):
    code = "bad_request"


class IngressRequestTimeoutError(OptiserveError):
    status = 408
    type = "timeout_error"
    code = "request_timeout"


class IngressTooManyRequestsError(OptiserveError):
    status = 429
    type = "overloaded_error"
    code = "too_many_requests"
    headers = MappingProxyType({"Retry-After": "1"})


class IngressBadGatewayError(OptiserveError):
    status = 502
    code = "bad_gateway"


class IngressUnavailableError(OptiserveError):
    status = 503
    type = "overloaded_error"
    code = "service_unavailable"
    headers = MappingProxyType({"Retry-After": "1"})


class IngressGatewayTimeoutError(OptiserveError):
    status = 504
    type = "timeout_error"
    code = "gateway_timeout"


# -- the one mapping ----------------------------------------------------------------------------------------------


def error_body(error: OptiserveError, kserve: bool = False) -> dict[str, Any]:
    message = error.client_message
    return {"error": message if kserve else {"message": message, "type": error.type, "code": error.code}}


def error_response(error: OptiserveError, kserve: bool = False) -> Response:
    body = orjson.dumps(error_body(error, kserve))
    return Response(body, status_code=error.status, media_type="application/json", headers=dict(error.headers))


# The gRPC status of each HTTP status an error declares (the Open Inference Protocol over gRPC answers the same
# errors): what clients retry on (UNAVAILABLE) stays retryable, and a refusal of size is gRPC's own for a message
# too large (RESOURCE_EXHAUSTED). Names of grpc.StatusCode, so this module needs no gRPC.
GRPC_STATUS = MappingProxyType(
    {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        404: "NOT_FOUND",
        405: "UNIMPLEMENTED",
        408: "DEADLINE_EXCEEDED",
        413: "RESOURCE_EXHAUSTED",
        422: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        502: "UNAVAILABLE",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
)


def grpc_status(status: int) -> str:
    """The name of the gRPC status code an error of HTTP ``status`` is answered with over gRPC."""
    return GRPC_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def run_error(exc: BaseException) -> OptiserveError:
    """The answer for an exception raised while a model ran a request: a declared client-facing error as it is
    (queue full, deadline, too much work), anything else a logged 500 ``inference_failed``."""
    if isinstance(exc, OptiserveError) and exc.status != OptiserveError.status:
        return exc
    log.error("inference failed", exc_info=exc)
    return InferenceFailedError(str(exc))


def catalogue() -> list[tuple[str, int, str, str]]:
    """(class, status, type, code) of every error the core and the server declare, from the classes themselves
    (the optimizer's and the load tests' own errors never reach an HTTP client and are left out)."""
    for module in DECLARING_MODULES:  # so that the table never depends on what else this process imported
        importlib.import_module(module)

    rows, seen = [], set()
    pending: list[type[OptiserveError]] = [OptiserveError]
    while pending:
        kind = pending.pop()
        if kind in seen:
            continue
        seen.add(kind)
        pending.extend(kind.__subclasses__())
        if kind.__module__.split(".")[0] in ("modelpkg", "serving"):
            rows.append((kind.__name__, kind.status, kind.type, kind.code))
    return sorted(rows, key=lambda row: (row[1], row[3], row[0]))


def table() -> str:
    """The Markdown table of :func:`catalogue`, as docs/limits.md holds it."""
    rows = ["| status | gRPC status | type | code | raised as |", "|---|---|---|---|---|"]
    rows += [
        f"| {status} | `{grpc_status(status)}` | `{type_}` | `{code}` | `{name}` |"
        for name, status, type_, code in catalogue()
    ]
    return "\n".join(rows)
