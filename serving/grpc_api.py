"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) and ``grpc.health.v1.Health``, as
methods of the replica: Ray Serve's gRPC ingress calls the method named like the RPC with the request message
and its ``grpc_context``. Each call goes through the same checks, batching, limits and error catalogue as HTTP:
the bearer token comes from the ``authorization`` metadata, a declared error becomes its gRPC status
(:data:`serving.errors.GRPC_STATUS`) with its client message (a 5xx's fixed text, never a traceback), and the
call is counted in ``optiserve_requests_total`` under ``route="/inference.GRPCInferenceService/<Method>"`` with
the HTTP status the same answer has over HTTP (so one alert on 5xx covers both protocols).

Method names are the protocol's (CamelCase), which Ray matches by name."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelpkg.errors import OptiserveError
from serving import grpc_codec, kserve_spec
from serving.errors import BodyTooLargeError, NotFoundError, UnauthorizedError, grpc_status
from serving.grpc_stubs import HEALTH_SERVICE, INFERENCE_SERVICE, health, inference
from serving.http import CLIENT_GONE, not_found, span_labels
from serving.jsonbody import shorten
from serving.metrics import NO_MODEL, metrics
from serving.replica import ModelRunner
from serving.served import ServedModels
from serving.tracing import end_request, tracing

log = logging.getLogger("optiserve")
SERVER_NAME = "optiserve"
REQUEST_ID_KEY = "x-request-id"
RAY_REQUEST_ID_KEY = "request_id"  # Ray Serve's own, in its access log lines and trailing metadata


def metadata_value(context: Any, key: str) -> str | None:
    """The first value of metadata ``key`` the client sent (keys are lower case on the wire)."""
    return next((value for name, value in context.invocation_metadata() if name == key), None)


class Call:
    """One gRPC call's bookkeeping: which model answered (its metrics labels), the HTTP-equivalent status and
    the call's trace span (None when tracing is off)."""

    def __init__(self, span: Any = None) -> None:
        self.labels: dict[str, str] = NO_MODEL
        self.status = 200
        self.span = span

    def answered_by(self, runner: ModelRunner) -> ModelRunner:
        self.labels = runner.labels
        return runner


def _request_id(context: Any) -> str:
    """The call's ``x-request-id`` metadata, else the id Ray Serve's access log gives it (its ``request_id``
    metadata, or one it made), else a new one."""
    ray_id = dict(context.trailing_metadata()).get(RAY_REQUEST_ID_KEY) or metadata_value(context, RAY_REQUEST_ID_KEY)
    return metadata_value(context, REQUEST_ID_KEY) or ray_id or uuid.uuid4().hex


def _call_span(context: Any, service: str, method: str, request_id: str) -> Any:
    """The call's server span (None when tracing is off), continuing a ``traceparent`` in its metadata."""
    trace = tracing()
    if not trace.enabled:
        return None
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "optiserve.request_id": request_id,
    }
    return trace.start_request(f"{service}/{method}", dict(context.invocation_metadata()), attributes)


def _grpc_code(status: int) -> int:
    return grpc.StatusCode[grpc_status(status)].value[0] if status != 200 else 0


class GrpcInference(ServedModels):
    """The gRPC methods of the replica; the HTTP routes are :mod:`serving.app`."""

    async def _answer(
        self,
        method: str,
        context: Any,
        empty: Callable[[], Any],
        work: Callable[[Call], Awaitable[Any]],
        protected: bool = True,
    ) -> Any:
        """Run ``work`` for one call of ``method``: request id (kept or made, sent back in the trailing metadata),
        bearer token (``protected`` methods), metrics, and any error as its gRPC status and message."""
        m = metrics()
        service = HEALTH_SERVICE if method == "Check" else INFERENCE_SERVICE
        request_id = _request_id(context)
        call = Call(_call_span(context, service, method, request_id))
        started = time.perf_counter()
        m.inflight.inc()
        try:
            context.set_trailing_metadata([*context.trailing_metadata(), (REQUEST_ID_KEY, request_id)])
            if protected and not self.limits.authorized(metadata_value(context, "authorization")):
                raise UnauthorizedError("missing or invalid bearer token")
            return await work(call)
        except OptiserveError as exc:
            return self._refuse(context, call, exc, empty)
        except asyncio.CancelledError:
            call.status = CLIENT_GONE
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s", method)
            return self._refuse(context, call, OptiserveError("unhandled error"), empty)
        finally:
            m.inflight.dec()
            route = f"/{service}/{method}"
            m.requests.labels(**call.labels, route=route, code=str(call.status)).inc()
            m.request_duration.labels(**call.labels, route=route).observe(time.perf_counter() - started)
            end_request(
                call.span, call.status, {"rpc.grpc.status_code": _grpc_code(call.status), **span_labels(call.labels)}
            )

    @staticmethod
    def _refuse(context: Any, call: Call, error: OptiserveError, empty: Callable[[], Any]) -> Any:
        call.status = error.status
        context.set_code(grpc.StatusCode[grpc_status(error.status)])
        context.set_details(error.client_message)
        return empty()

    def _model(self, call: Call, name: str, version: str | None) -> ModelRunner:
        runner = self.pick(name, version or None)
        if runner is None:
            raise not_found(name if not version else f"{shorten(name)} version {shorten(version)}", self.names())
        return call.answered_by(runner)

    def _ready(self) -> bool:
        return not self.draining and self.stalled() is None

    # -- inference.GRPCInferenceService ------------------------------------------------------------------------

    async def ServerLive(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802 -- the protocol's names
        async def work(call: Call) -> Any:
            return inference.ServerLiveResponse(live=True)

        return await self._answer("ServerLive", grpc_context, inference.ServerLiveResponse, work, protected=False)

    async def ServerReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            return inference.ServerReadyResponse(ready=self._ready())

        return await self._answer("ServerReady", grpc_context, inference.ServerReadyResponse, work, protected=False)

    async def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from modelpkg.version import __version__

        async def work(call: Call) -> Any:
            return inference.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

        return await self._answer(
            "ServerMetadata", grpc_context, inference.ServerMetadataResponse, work, protected=False
        )

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            self._model(call, request.name, request.version)
            return inference.ModelReadyResponse(ready=self._ready())

        return await self._answer("ModelReady", grpc_context, inference.ModelReadyResponse, work)

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            runner = self._model(call, request.name, request.version)
            return grpc_codec.model_metadata(kserve_spec.model_metadata(runner))

        return await self._answer("ModelMetadata", grpc_context, inference.ModelMetadataResponse, work)

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            runner = self._model(call, request.model_name, request.model_version)
            if request.ByteSize() > self.limits.max_body_bytes:
                raise BodyTooLargeError(f"request message is larger than {self.limits.max_body_bytes} bytes")
            manifest = runner.manifest
            parsed = grpc_codec.infer_request(request, kserve_spec.max_elements(manifest, self.limits.max_inputs))
            options = kserve_spec.request_options(parsed, manifest)
            items = kserve_spec.request_items(parsed, manifest, self.limits.max_inputs, options)
            cache_control = metadata_value(grpc_context, "cache-control")
            result = await self.infer(runner, items, cache_control, options.truncate, call.span)
            with tracing().child("serialize", call.span):
                outputs = kserve_spec.output_tensors(runner, result, options)
                return grpc_codec.infer_response(runner.name, manifest.version, parsed, outputs)

        return await self._answer("ModelInfer", grpc_context, inference.ModelInferResponse, work)

    # -- grpc.health.v1.Health ---------------------------------------------------------------------------------

    async def Check(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """The server's health (service ``""``) or the inference service's: SERVING while ready; any other
        service name is NOT_FOUND, as the health protocol specifies."""

        async def work(call: Call) -> Any:
            if request.service not in ("", INFERENCE_SERVICE):
                raise NotFoundError(
                    f"service {shorten(request.service)!r} is unknown here; ask for '' or {INFERENCE_SERVICE}"
                )
            status = health.HealthCheckResponse.SERVING if self._ready() else health.HealthCheckResponse.NOT_SERVING
            return health.HealthCheckResponse(status=status)

        return await self._answer("Check", grpc_context, health.HealthCheckResponse, work, protected=False)
