"""The Ray Serve application: an HTTP ingress and one batching model deployment per package.

    HTTP ─► Ingress (FastAPI: validation, errors, metrics) ─handle─► EmbeddingModel replicas
                                                                      @serve.batch over *items*,
                                                                      length-sorted model calls

A request with N inputs contributes N items to dynamic batches: ``batch_size_fn`` counts items, and a request
larger than one batch is split across batches and reassembled in order.
"""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's ingress wrapper.

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.api import MAX_BODY_BYTES, ApiError, EmbeddingsRequest, embeddings_body, json_response
from serving.metrics import CONTENT_TYPE, DEFAULT_METRICS_DIR, MULTIPROC_ENV, exposition, metrics
from serving.package import ServingDefaults, load_package
from serving.pipeline import EmbeddingPipeline

log = logging.getLogger("optiserve")
READY_TIMEOUT_S = 5.0
RETRY_AFTER_S = "1"


@dataclass(frozen=True)
class EmbedResult:
    embeddings: np.ndarray
    tokens: int


def _items_in(requests: list[tuple[list[str], float]]) -> int:
    return sum(len(texts) for texts, _ in requests)


@serve.deployment(name="EmbeddingModel", ray_actor_options={"num_cpus": 1})
class EmbeddingModel:
    """A replica holding one package's runtime. Batch settings come from the package and ``user_config``."""

    def __init__(self, package_dir: str, threads: int | None = None) -> None:
        package = load_package(package_dir)
        manifest = package.manifest
        self.pipeline = EmbeddingPipeline.from_package(package, threads)
        self.settings = manifest.serving
        self.labels = {"model": manifest.name, "version": manifest.version}
        self._metrics = metrics()
        self._metrics.model_info.labels(
            **self.labels,
            runtime=manifest.runtime,
            precision=manifest.precision,
            chain=">".join(p.name for p in manifest.chain) or "none",
        ).set(1)
        # One worker thread: model calls run off the event loop so the next batch can gather meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optiserve-model")
        self._apply(self.settings)
        log.info("replica ready: %s %s (%s, %s)", manifest.name, manifest.version, manifest.runtime, manifest.precision)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Retune batching of a running replica (Ray Serve calls this on ``user_config`` changes)."""
        self._apply(ServingDefaults.model_validate({**self.settings.model_dump(), **(user_config or {})}))

    def _apply(self, settings: ServingDefaults) -> None:
        self.settings = settings
        self._batch.set_max_batch_size(settings.max_batch_size)
        self._batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Embeddings for ``texts``, in order. Splits requests larger than one batch."""
        size = self.settings.max_batch_size
        enqueued = time.perf_counter()
        parts = await asyncio.gather(
            *(self._batch((texts[i : i + size], enqueued)) for i in range(0, len(texts), size))
        )
        return EmbedResult(np.concatenate([p.embeddings for p in parts]), sum(p.tokens for p in parts))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_items_in)
    async def _batch(self, requests: list[tuple[list[str], float]]) -> list[EmbedResult]:
        started = time.perf_counter()
        m, labels = self._metrics, self.labels
        for _, enqueued in requests:
            m.queue_wait.labels(**labels).observe(started - enqueued)
        texts = [text for chunk, _ in requests for text in chunk]
        settings = self.settings
        embeddings, stats = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.pipeline.embed, texts, settings.max_call_items, settings.max_batch_tokens
        )
        m.inference_duration.labels(**labels).observe(time.perf_counter() - started)
        m.batch_size.labels(**labels).observe(stats.items)
        m.batch_tokens.labels(**labels).observe(stats.real_tokens)
        m.batch_padding_ratio.labels(**labels).observe(stats.padding_ratio)
        results, start = [], 0
        for chunk, _ in requests:
            end = start + len(chunk)
            results.append(EmbedResult(embeddings[start:end], int(stats.token_counts[start:end].sum())))
            start = end
        return results

    async def check_health(self) -> None:
        """Fail (and let Ray Serve restart the replica) if the runtime can no longer embed."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.pipeline.embed, ["health check"])

    def ready(self) -> bool:
        return True


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
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, str(exc.detail), "invalid_request_error", code).response()


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return ApiError(500, "internal server error", "server_error", "internal_error").response()


@api.middleware("http")
async def _observe(request: Request, call_next: Any) -> Response:
    """Count and time every request; refuse oversized bodies before they are read."""
    m = metrics()
    labels = getattr(request.app.state, "labels", {"model": "", "version": ""})
    started = time.perf_counter()
    m.inflight.labels(**labels).inc()
    status = 500
    try:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = ApiError(
                413, f"request body is larger than {MAX_BODY_BYTES} bytes", "invalid_request_error", "body_too_large"
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


@serve.deployment(name="Ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP front door: OpenAI embeddings, KServe v2 health, Prometheus metrics."""

    def __init__(self, model: DeploymentHandle, model_name: str, model_version: str) -> None:
        self.model = model
        self.model_name = model_name
        self.labels = {"model": model_name, "version": model_version}
        api.state.labels = self.labels

    @api.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingsRequest) -> Response:
        if body.model is not None and body.model != self.model_name:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here; available: {self.model_name!r}",
                "invalid_request_error",
                "model_not_found",
            )
        result = await self._embed(body.texts())
        if body.dimensions is not None and body.dimensions != result.embeddings.shape[1]:
            raise ApiError(
                422,
                f"dimensions: this model returns {result.embeddings.shape[1]}, got {body.dimensions}",
                "invalid_request_error",
                "invalid_value",
            )
        return json_response(embeddings_body(self.model_name, result.embeddings, result.tokens, body.encoding_format))

    async def _embed(self, texts: list[str]) -> EmbedResult:
        try:
            return await self.model.embed.remote(texts)
        except BackPressureError:
            raise ApiError(
                503,
                "server is overloaded; retry later",
                "overloaded_error",
                "overloaded",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        except Exception:
            log.exception("inference failed")
            raise ApiError(500, "inference failed", "server_error", "inference_failed") from None

    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return json_response({"live": True})

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        try:
            await asyncio.wait_for(self.model.ready.remote(), READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to answer means "not ready"
            log.warning("readiness check failed: %s", exc)
            return json_response({"ready": False}, status=503)
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
    """Bind the deployments for one package, with ``max_ongoing_requests`` large enough for batches to fill."""
    manifest = load_package(package_dir).manifest
    settings = ServingDefaults.model_validate({**manifest.serving.model_dump(), **(overrides or {})})
    runtime_env = {"env_vars": env_vars} if env_vars else {}
    model = EmbeddingModel.options(
        user_config=settings.model_dump(),
        # Two batches' worth of requests may be queued in the replica: one running, one gathering.
        max_ongoing_requests=max(2 * settings.max_batch_size, 16),
        ray_actor_options={"num_cpus": 1, "runtime_env": runtime_env},
    ).bind(package_dir, threads)
    return Ingress.options(ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env}).bind(
        model, manifest.name, manifest.version
    )


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
