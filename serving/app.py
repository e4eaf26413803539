"""The Ray Serve application: one deployment serving one or more model packages, routed by model name, with
HTTP and the models in the same replica.

Note for maintainers: ``serve.ingress`` wraps ``InferenceService`` in a class that is pickled *by value*, so the
globals its methods read are frozen as they were in the driver. Per-process settings (``LIMITS``) are read in
module-level functions or stored on the instance in ``__init__``, never read as globals inside its methods.

    HTTP ─► Ray proxy ─► InferenceService replica: FastAPI (validation, errors, metrics)
                                                   + a ModelRunner per package (own batch queue, runtime)

Routes: OpenAI ``/v1/embeddings`` and ``/v1/models``; ``/v1/classify`` for classifiers (``/v1/images/classify``
for image classifiers); ``/v1/rerank`` (and
``/rerank``) for rerankers; KServe v2 (Open Inference
Protocol) ``/v2``, ``/v2/health/*``, ``/v2/models/{m}[/versions/{v}]``, ``.../ready`` and ``.../infer``;
``/metrics``.

HTTP handling and the models share a replica process (as in TEI and Triton): measured on 2 cores, a separate
ingress deployment with a handle call to a model deployment served 57 req/s where this serves 95 (see README).
Several packages share each replica the way a Triton server holds a model repository.

This module holds the routes and the app's construction (``build_app``, ``app_builder``); the error handlers and
middlewares (metrics, bearer token, body size) are :mod:`serving.http`, the KServe v2 view of a model is
:mod:`serving.kserve_spec`, and its wire codec :mod:`serving.kserve`.
"""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's ingress wrapper.

import uuid
from contextlib import AbstractContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelpkg import settings
from modelpkg.images import from_text
from modelpkg.manifest import ServingDefaults
from modelpkg.package import load_package
from modelpkg.pipeline import apply_prompt, check_dimensions, cut_to
from modelpkg.settings import DRAIN_S
from modelpkg.version import __version__
from serving import http, kserve, kserve_spec
from serving.api import (
    IMAGE_ROUTE,
    TASK_ROUTES,
    ClassifyRequest,
    EmbeddingsRequest,
    ImageClassifyRequest,
    RerankRequest,
    classification_body,
    embeddings_body,
    image_classification_body,
    rerank_body,
    rerank_scores,
)
from serving.control import DEPLOYMENT_NAME
from serving.errors import (
    ModelNotFoundError,
    ModelRequiredError,
    WrongInputError,
    WrongTaskError,
)
from serving.grpc_api import GrpcInference
from serving.jsonbody import json_response, shorten
from serving.metrics import CONTENT_TYPE, DEFAULT_METRICS_DIR, MULTIPROC_ENV, exposition
from serving.replica import InferResult, ModelRunner
from serving.served import CONTROL_KEYS
from serving.tracing import tracing

SERVER_VERSION = __version__
MAX_ONGOING_REQUESTS = 1024
# Ray Serve calls check_health (a one-item model call) every HEALTH_CHECK_PERIOD_S; one not back within
# HEALTH_CHECK_TIMEOUT_S fails, and 3 failures in a row replace the replica. Model calls are bounded
# (max_batch_tokens), so a healthy replica answers well within it even under load.
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 5.0
# Pinned, so that a redeploy that changes only user_config (the package set, batching) reaches running replicas
# through reconfigure() instead of restarting them (serving/control.py); a new optiserve version restarts them.
DEPLOYMENT_VERSION = f"optiserve-{__version__}"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that validates its JSON body itself (:func:`serving.http.parse_body`)."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


# The schema at /openapi.json is always served (clients and tests/integration/test_fuzz.py read it). The /docs
# page is our route, not FastAPI's docs_url, so that each request reads OPTISERVE_DOCS in the replica (the app is
# pickled in the driver); off, it answers 404 like any unknown path.
api = FastAPI(title="optiserve", version=SERVER_VERSION, docs_url=None, redoc_url=None)
http.install(api)


def _serializing(request: Request) -> AbstractContextManager[None]:
    """The request's ``serialize`` span around building its response body (nothing when tracing is off)."""
    return tracing().child("serialize", request.scope.get(http.SPAN_KEY))


def docs_enabled() -> bool:
    """``OPTISERVE_DOCS=1`` in this process (``optiserve serve`` sets it for loopback addresses)."""
    return settings.DOCS.get() == "1"


@api.get("/docs", include_in_schema=False)
async def docs_page() -> Response:
    if not docs_enabled():
        raise StarletteHTTPException(404, "Not Found")
    return get_swagger_ui_html(openapi_url="/openapi.json", title="optiserve API")


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class InferenceService(GrpcInference):
    """OpenAI embeddings, classification, KServe v2 and Prometheus metrics for one or more packages over HTTP, and
    KServe v2 over gRPC (:class:`~serving.grpc_api.GrpcInference`, when the server has a gRPC port)."""

    def __init__(
        self, package_dirs: list[str], threads: int | None = None, served_names: list[str | None] | None = None
    ) -> None:
        super().__init__(package_dirs, threads, served_names)

    def _resolve(self, request: Request, name: str | None, task: str, route: str, images: bool = False) -> ModelRunner:
        """The model a text route's request names (or the only one with ``task``), or with ``images`` an image
        route's; labels its metrics."""
        if name is None:
            fitting = [
                n
                for n in self.names(task)
                if (self.models[n].manifest.takes_images if images else self.models[n].manifest.takes_text)
            ]
            if len(fitting) != 1:
                if not fitting:
                    raise ModelNotFoundError(f"no {task} model is served here; {route} needs one")
                raise ModelRequiredError(f"model is required: this server has several {task} models {fitting}")
            name = fitting[0]
        runner = self.pick(name)
        if runner is None:
            raise http.not_found(name, self.names())
        http.answered_by(request.scope, runner)
        if images and not runner.manifest.takes_images:
            kind = "text" if runner.manifest.takes_text else "float32 tensors"
            raise WrongInputError(f"model {name!r} takes {kind}, not images; use {TASK_ROUTES[runner.manifest.task]}")
        if not images and runner.manifest.takes_images:
            raise WrongInputError(f"model {name!r} takes images, not text; use POST {IMAGE_ROUTE}")
        if not images and not runner.manifest.takes_text:
            raise WrongInputError(f"model {name!r} takes float32 tensors, not text; use POST /v2/models/{name}/infer")
        if runner.manifest.task != task:
            raise WrongTaskError(
                f"model {name!r} is a {runner.manifest.task} model; use {TASK_ROUTES[runner.manifest.task]}"
            )
        return runner

    def _kserve_model(self, request: Request, name: str, version: str | None = None) -> ModelRunner:
        """The model a KServe route names; ``version`` may be the manifest's version or the package id (of the
        stable package or of a canary beside it)."""
        runner = self.pick(name, version)
        if runner is None:
            raise http.not_found(
                name if version is None else f"{shorten(name)} version {shorten(version)}", self.names()
            )
        http.answered_by(request.scope, runner)
        return runner

    async def _run(self, runner: ModelRunner, items: list[Any], request: Request, truncate: bool | None) -> InferResult:
        """Run a request's items (its cache directives and trace span from the request)."""
        span = request.scope.get(http.SPAN_KEY)
        return await self.infer(runner, items, request.headers.get("cache-control"), truncate, span)

    @api.post("/v1/embeddings", openapi_extra=json_body(EmbeddingsRequest))
    async def embeddings(self, request: Request) -> Response:
        body = http.parse_body(EmbeddingsRequest, await request.body())
        runner = self._resolve(request, body.model, "embedding", "/v1/embeddings")
        manifest = runner.manifest
        check_dimensions(manifest, body.dimensions)  # before any work
        texts = apply_prompt(manifest, body.texts(), body.prompt_name, body.prompt)
        result = await self._run(runner, texts, request, body.truncate)
        vectors = cut_to(manifest, result.outputs, body.dimensions)
        with _serializing(request):
            return json_response(
                embeddings_body(runner.name, vectors, result.tokens, result.truncated, body.encoding_format)
            )

    @api.post("/v1/classify", openapi_extra=json_body(ClassifyRequest))
    async def classify(self, request: Request) -> Response:
        body = http.parse_body(ClassifyRequest, await request.body())
        runner = self._resolve(request, body.model, "classification", "/v1/classify")
        result = await self._run(runner, body.texts(), request, body.truncate)
        with _serializing(request):
            return json_response(
                classification_body(
                    runner.name, result.outputs, runner.manifest.labels, result.tokens, result.truncated
                )
            )

    @api.post(IMAGE_ROUTE, openapi_extra=json_body(ImageClassifyRequest))
    async def classify_images(self, request: Request) -> Response:
        body = http.parse_body(ImageClassifyRequest, await request.body())
        runner = self._resolve(request, body.model, "classification", IMAGE_ROUTE, images=True)
        files = [from_text(image, f"input {index}") for index, image in enumerate(body.images())]
        result = await self._run(runner, files, request, None)
        labels = runner.manifest.labels
        with _serializing(request):
            return json_response(image_classification_body(runner.name, result.outputs, labels, body.top_k))

    @api.post("/v1/rerank", openapi_extra=json_body(RerankRequest))
    async def rerank(self, request: Request) -> Response:
        # documents may be objects ({"text": ...}), one JSON container each
        containers = http.MAX_JSON_CONTAINERS + self.limits.max_inputs
        body = http.parse_body(RerankRequest, await request.body(), containers)
        runner = self._resolve(request, body.model, "rerank", "/v1/rerank")
        pairs = [(body.query, document) for document in body.document_texts()]
        result = await self._run(runner, pairs, request, body.truncate)
        scores = rerank_scores(result.outputs, "identity" if body.raw_scores else runner.manifest.score_activation)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        with _serializing(request):
            return json_response(rerank_body(runner.name, body, scores, result.tokens, result.truncated, request_id))

    # text-embeddings-inference's and Infinity's path for the same route
    @api.post("/rerank", openapi_extra=json_body(RerankRequest))
    async def rerank_unversioned(self, request: Request) -> Response:
        return await self.rerank(request)

    @api.get("/v1/models")
    async def list_models(self) -> Response:
        data = [
            {"id": name, "object": "model", "owned_by": "optiserve", "task": r.manifest.task}
            for name, r in self.models.items()
        ]
        return json_response({"object": "list", "data": data})

    @api.get("/v2")
    async def server_metadata(self) -> Response:
        return json_response({"name": "optiserve", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})

    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return json_response({"live": True})

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        # Ray routes to a replica only after its constructor and first reconfigure() loaded, verified and warmed up
        # every package; a stopping server, or a replica whose model is stuck in a call, answers 503.
        if self.draining:
            return json_response({"ready": False, "reason": "the server is stopping"}, status=503)
        if reason := self.stalled():  # Ray's health check replaces this replica soon; meanwhile, say so
            return json_response({"ready": False, "reason": reason}, status=503)
        return json_response({"ready": True})

    @api.get("/v2/models/{name}")
    async def model_metadata(self, name: str, request: Request) -> Response:
        return json_response(kserve_spec.model_metadata(self._kserve_model(request, name)))

    @api.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(self, name: str, version: str, request: Request) -> Response:
        return json_response(kserve_spec.model_metadata(self._kserve_model(request, name, version)))

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str, request: Request) -> Response:
        return json_response({"name": self._kserve_model(request, name).name, "ready": True})

    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(self, name: str, version: str, request: Request) -> Response:
        return json_response({"name": self._kserve_model(request, name, version).name, "ready": True})

    @api.post("/v2/models/{name}/infer")
    async def kserve_infer(self, name: str, request: Request) -> Response:
        return await self._kserve_infer(self._kserve_model(request, name), request)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def kserve_version_infer(self, name: str, version: str, request: Request) -> Response:
        return await self._kserve_infer(self._kserve_model(request, name, version), request)

    async def _kserve_infer(self, runner: ModelRunner, request: Request) -> Response:
        limit = kserve_spec.max_elements(runner.manifest, self.limits.max_inputs)
        parsed = kserve.parse_infer_request(await request.body(), request.headers.get(kserve.HEADER_LENGTH), limit)
        options = kserve_spec.request_options(parsed, runner.manifest)
        items = kserve_spec.request_items(parsed, runner.manifest, self.limits.max_inputs, options)
        result = await self._run(runner, items, request, options.truncate)
        with _serializing(request):
            body, headers = kserve.infer_response(
                runner.name, runner.manifest.version, parsed, kserve_spec.output_tensors(runner, result, options)
            )
        return Response(body, media_type=headers.pop("content-type"), headers=headers)

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE)


def build_app(
    package_dirs: list[str] | str,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    env_vars: dict[str, str] | None = None,
    *,
    num_gpus: float | None = None,
    num_replicas: int | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    served_names: list[str | None] | None = None,
) -> serve.Application:
    """Bind the deployment for one or more packages (model names must differ). ``max_ongoing_requests`` is set
    large enough for batches to fill; ``num_gpus`` (fractional allowed) reserves GPUs per replica; with
    ``autoscaling_config`` the replica count follows load (``target_ongoing_requests`` defaults to the largest
    ``max_batch_size``, since a replica holds that many requests to fill one batch)."""
    dirs = [package_dirs] if isinstance(package_dirs, str) else list(package_dirs)
    if not dirs:
        raise ValueError("build_app needs at least one package directory")
    batch_sizes = []
    for package_dir in dirs:
        manifest = load_package(package_dir).manifest
        chosen = {k: v for k, v in (overrides or {}).items() if k not in CONTROL_KEYS}
        merged = {**manifest.serving.model_dump(), **chosen}
        batch_sizes.append(ServingDefaults.model_validate(merged).max_batch_size)
    ongoing = max(MAX_ONGOING_REQUESTS, 2 * max(batch_sizes))
    options: dict[str, Any] = {
        "user_config": dict(overrides or {}),
        # Requests go straight to the replica, whose own bounded queue (max_queued_items) answers 503 in JSON.
        "max_ongoing_requests": ongoing,
        # Last resort if the replica stops taking requests: Ray's router answers 503 past this many waiting.
        "max_queued_requests": MAX_ONGOING_REQUESTS,
        # Serve's access log formats and writes a line per request in the replica (a few % of its CPU at
        # thousands of requests/s); optiserve_requests_total counts them all anyway.
        "logging_config": {"enable_access_log": settings.ACCESS_LOG.get()},
        # A replica that stops answering (stalled, wedged runtime) fails 3 checks in a row within
        # period + 3 x timeout (17 s) and is replaced (Ray's defaults, 10 s / 30 s, take up to 100 s).
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        # A stopping replica finishes what it holds for up to OPTISERVE_DRAIN_S (Ray's default: 20 s).
        "graceful_shutdown_timeout_s": DRAIN_S.get(),
        "graceful_shutdown_wait_loop_s": 0.5,
        # A change that restarts replicas (threads, GPUs) starts the new ones before stopping the old ones.
        "max_surge_percent": 100,
        "version": DEPLOYMENT_VERSION,
        "_internal": True,  # Ray 2.60 accepts `version` only so
        # A replica reserves as many cores as its runtime uses threads (Ray also sets OMP_NUM_THREADS to it).
        "ray_actor_options": {
            "num_cpus": threads or 1,
            **({"num_gpus": num_gpus} if num_gpus else {}),
            "runtime_env": {"env_vars": env_vars} if env_vars else {},
        },
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = {"target_ongoing_requests": max(batch_sizes), **autoscaling_config}
    elif num_replicas is not None:
        options["num_replicas"] = num_replicas
    deployment: Any = InferenceService  # a Ray Serve Deployment (its decorator is untyped)
    return deployment.options(**options).bind(dirs, threads, served_names)


APP_BUILDER_ARGS = {
    "package_dir",
    "package_dirs",
    "threads",
    "num_gpus",
    "max_batch_size",
    "batch_wait_timeout_s",
    "metrics_dir",
}


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for ``serve run serving.app:app_builder package_dir=PATH`` and for the ``import_path`` of a
    Serve config file (``deploy/serve_config.yaml``). ``package_dir`` takes one path or several separated by
    commas (or give ``package_dirs`` as a YAML list). Optional: ``threads``, ``num_gpus``, ``max_batch_size``,
    ``batch_wait_timeout_s``, ``metrics_dir`` (default ``/tmp/optiserve-metrics``). Replicas and autoscaling
    are set in the config's ``deployments`` section."""
    unknown = set(args) - APP_BUILDER_ARGS
    if unknown or not ({"package_dir", "package_dirs"} & set(args)):
        raise ValueError(
            f"app_builder takes package_dir=PATH[,PATH...] (or package_dirs) and optional "
            f"{sorted(APP_BUILDER_ARGS - {'package_dir', 'package_dirs'})}; got {sorted(args)}"
        )
    dirs = args.get("package_dirs") or str(args["package_dir"]).split(",")
    overrides: dict[str, Any] = {}
    if "max_batch_size" in args:
        overrides["max_batch_size"] = int(args["max_batch_size"])
    if "batch_wait_timeout_s" in args:
        overrides["batch_wait_timeout_s"] = float(args["batch_wait_timeout_s"])
    threads = int(args["threads"]) if "threads" in args else None
    num_gpus = float(args["num_gpus"]) if "num_gpus" in args else None
    env_vars = {MULTIPROC_ENV: str(args.get("metrics_dir", DEFAULT_METRICS_DIR))}
    return build_app([str(d).strip() for d in dirs], threads, overrides, env_vars, num_gpus=num_gpus)
