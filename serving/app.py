"""The Ray Serve application: one deployment per model package, HTTP and model in the same replica.

Note for maintainers: ``serve.ingress`` wraps ``EmbeddingService`` in a class that is pickled *by value*, so the
globals its methods read are frozen as they were in the driver. Per-process settings (``LIMITS``) are read in
module-level functions or stored on the instance in ``__init__``, never read as globals inside its methods.

    HTTP ─► Ray proxy ─► EmbeddingService replica: FastAPI (validation, errors, metrics)
                                                  + EmbeddingReplica (@serve.batch over items, runtime)

HTTP handling and the model share a replica process (as in TEI): measured on 2 cores, a separate ingress
deployment with a handle call to a model deployment served 57 req/s where this serves 95 (see README).
"""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's ingress wrapper.

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.api import ApiError, EmbeddingsRequest, embeddings_body, json_response
from serving.errors import DeadlineExceededError, OverloadedError
from serving.limits import LIMITS
from serving.metrics import CONTENT_TYPE, DEFAULT_METRICS_DIR, MULTIPROC_ENV, current_labels, exposition, metrics
from serving.package import ServingDefaults, load_package
from serving.replica import EmbeddingReplica, EmbedResult

log = logging.getLogger("optiserve")
MAX_ONGOING_REQUESTS = 1024
RETRY_AFTER_S = "1"


api = FastAPI(title="optiserve", version="0.1.0", docs_url=None, redoc_url=None)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> Response:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "request body is not valid JSON", "invalid_request_error", "invalid_json").response()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{where}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ApiError(422, message, "invalid_request_error", "invalid_value").response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    code = codes.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, str(exc.detail), "invalid_request_error", code).response()


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return ApiError(500, "internal server error", "server_error", "internal_error").response()


INFERENCE_PREFIXES = ("/v1/", "/v2/models")


@api.middleware("http")
async def _observe(request: Request, call_next: Any) -> Response:
    """Count and time every request; check the bearer token on inference routes."""
    m = metrics()
    labels = current_labels()
    started = time.perf_counter()
    m.inflight.labels(**labels).inc()
    status = 500
    try:
        if request.url.path.startswith(INFERENCE_PREFIXES) and not LIMITS.authorized(
            request.headers.get("authorization")
        ):
            response = ApiError(
                401,
                "missing or invalid bearer token",
                "authentication_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            ).response()
        else:
            response = await call_next(request)
        status = response.status_code
        return response
    finally:
        m.inflight.labels(**labels).dec()
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
        ).response()
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


api.add_middleware(BodySizeLimit)


@serve.deployment(name="EmbeddingService")
@serve.ingress(api)
class EmbeddingService(EmbeddingReplica):
    """OpenAI embeddings, KServe v2 health and Prometheus metrics for one package."""

    def __init__(self, package_dir: str, threads: int | None = None) -> None:
        super().__init__(package_dir, threads)

    @api.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingsRequest) -> Response:
        if body.model is not None and body.model != self.model_name:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here; available: {self.model_name!r}",
                "invalid_request_error",
                "model_not_found",
            )
        texts = body.texts()
        if body.dimensions is not None and body.dimensions != self.pipeline.embedding_dim:
            raise ApiError(
                422,
                f"dimensions: this model returns {self.pipeline.embedding_dim}, got {body.dimensions}",
                "invalid_request_error",
                "invalid_value",
            )
        if self.limits.on_overflow == "reject" and (too_long := self.pipeline.encoder.too_long(texts)):
            raise ApiError(
                422,
                f"input: item {too_long[0]} is longer than the model's {self.pipeline.encoder.max_length} tokens "
                "(this server rejects instead of truncating)",
                "invalid_request_error",
                "input_too_long",
            )
        result = await self._embed_or_error(texts)
        return json_response(
            embeddings_body(self.model_name, result.embeddings, result.tokens, result.truncated, body.encoding_format)
        )

    async def _embed_or_error(self, texts: list[str]) -> EmbedResult:
        try:
            return await self.embed(texts)
        except OverloadedError:
            raise ApiError(
                503,
                "server is overloaded; retry later",
                "overloaded_error",
                "overloaded",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        except DeadlineExceededError as exc:
            raise ApiError(504, str(exc), "timeout_error", "queue_timeout") from None
        except Exception:
            log.exception("inference failed")
            raise ApiError(500, "inference failed", "server_error", "inference_failed") from None

    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return json_response({"live": True})

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        # This replica answers only after its constructor loaded and verified the package.
        return json_response({"ready": True})

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE)


def build_app(
    package_dir: str,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    env_vars: dict[str, str] | None = None,
) -> serve.Application:
    """Bind the deployment for one package, with ``max_ongoing_requests`` large enough for batches to fill."""
    manifest = load_package(package_dir).manifest
    settings = ServingDefaults.model_validate({**manifest.serving.model_dump(), **(overrides or {})})
    return EmbeddingService.options(
        user_config=settings.model_dump(),
        # Requests go straight to the replica, whose own bounded queue (max_queued_items) answers 503 in JSON.
        # This is far above 2 x max_batch_size, so batches can always fill.
        max_ongoing_requests=max(MAX_ONGOING_REQUESTS, 2 * settings.max_batch_size),
        # Last resort if the replica stops taking requests: Ray's router answers 503 past this many waiting.
        max_queued_requests=MAX_ONGOING_REQUESTS,
        # A replica reserves as many cores as its runtime uses threads (Ray also sets OMP_NUM_THREADS to it).
        ray_actor_options={"num_cpus": threads or 1, "runtime_env": {"env_vars": env_vars} if env_vars else {}},
    ).bind(package_dir, threads)


def app_builder(args: dict[str, str]) -> serve.Application:
    """Entry point for ``serve run serving.app:app_builder package_dir=PATH`` and for the ``import_path`` of a
    Serve config file (``deploy/serve_config.yaml``). Optional args: ``threads``, ``max_batch_size``,
    ``batch_wait_timeout_s``, ``metrics_dir`` (default ``/tmp/optiserve-metrics``)."""
    unknown = set(args) - {"package_dir", "threads", "max_batch_size", "batch_wait_timeout_s", "metrics_dir"}
    if unknown or "package_dir" not in args:
        raise ValueError(
            f"app_builder takes package_dir=PATH (required) and threads, max_batch_size, "
            f"batch_wait_timeout_s, metrics_dir; got {sorted(args)}"
        )
    overrides: dict[str, Any] = {}
    if "max_batch_size" in args:
        overrides["max_batch_size"] = int(args["max_batch_size"])
    if "batch_wait_timeout_s" in args:
        overrides["batch_wait_timeout_s"] = float(args["batch_wait_timeout_s"])
    threads = int(args["threads"]) if "threads" in args else None
    env_vars = {MULTIPROC_ENV: args.get("metrics_dir", DEFAULT_METRICS_DIR)}
    return build_app(args["package_dir"], threads, overrides, env_vars)
