"""The model side of a replica: one package's pipeline behind its own dynamic batch queue, over *items*.

Every input text is an item, so a request with N inputs contributes N items to the dynamic batches (and can span
several); batches are formed round-robin across requests (:class:`serving.scheduler.FairBatcher`), so one big
request does not hold up the small ones behind it. Each batch is cut into length-sorted model calls within the
token budget (``max_batch_tokens``), where padding texts to one width would cost more than another call (the
replica measures a call's cost when it starts), and runs on a worker thread, so the event loop keeps accepting (and
batching) requests while the model computes. Requests are admitted by their estimated seconds of work
(:class:`serving.scheduler.WorkMeter`). A replica may hold several packages: each :class:`ModelRunner` has its
own queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelpkg.errors import OverloadedError, RequestTooLargeError
from modelpkg.hardware import detect, serving_mismatch
from modelpkg.images import ImageTooLargeError, image_input
from modelpkg.manifest import BATCH_INVARIANT_COSINE, Manifest, ServingDefaults
from modelpkg.package import load_package
from modelpkg.pipeline import CALIBRATION_ITEMS, BatchStats, TextPipeline, load_pipeline, measure_call_cost
from modelpkg.runtimes.base import assigned_gpus
from modelpkg.tokenizer import TextItem, item_chars
from serving.batching import AdaptiveWait
from serving.metrics import metrics
from serving.response_cache import ResponseCache, key_of
from serving.scheduler import FairBatcher, WorkMeter
from serving.tracing import sampled, tracing

log = logging.getLogger("optiserve")


@dataclass
class Traffic:
    """What a runner answered since it was loaded: the live numbers a canary is judged by."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0  # summed over answered requests, from admission to result
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=1024))

    def record(self, seconds: float) -> None:
        self.requests += 1
        self.seconds += seconds
        self.recent.append(seconds)

    def summary(self) -> dict[str, float]:
        recent = sorted(self.recent)
        p99 = recent[min(len(recent) - 1, int(0.99 * len(recent)))] if recent else 0.0
        return {"requests": self.requests, "errors": self.errors, "seconds": self.seconds, "p99_s": p99}


@dataclass(frozen=True)
class InferResult:
    outputs: np.ndarray  # one row per input: embedding or logits
    tokens: int
    truncated: np.ndarray


# One input's result: (output row, tokens, truncated).
ItemResult = tuple[np.ndarray, int, bool]
CacheUse = Literal["use", "refresh", "bypass"]  # from the request's Cache-Control: -, no-cache, no-store
# Before the first batches: tokens per character of English text with a WordPiece vocabulary is about 0.25;
# start above it, so early estimates err towards more work.
TOKENS_PER_CHAR = 0.3
DEFAULT_CACHE_MB = 64.0
PROBE_TEXT = "a short sentence that checks how fast this replica computes"
DECODE_THREADS = 2  # per image model: Pillow releases the GIL while it decodes and resizes
STALL_FACTOR = 3.0  # a model call running this many times max_request_s means the model is stuck


class ModelRunner:
    """Loads and verifies a package, runs texts through it in fair dynamic batches (serving/scheduler.py), admits
    requests by their estimated work, records batch metrics."""

    def __init__(self, package_dir: str, threads: int | None = None, name: str | None = None) -> None:
        package = load_package(package_dir)
        self.manifest: Manifest = package.manifest
        self.name = name or self.manifest.name  # the name clients use (``--served-model-name``), else the package's
        self.path = str(package_dir)
        self.package = package_id(self.manifest)
        self.pipeline = load_pipeline(package, threads)
        self.labels = {"model": self.name, "version": self.manifest.version, "package": self.package}
        # Every answer this runner computes names it (serving.http.Gate adds them to the response).
        self.response_headers = [
            (b"optiserve-model", self.name.encode()),
            (b"optiserve-model-version", self.manifest.version.encode()),
            (b"optiserve-package", self.package.encode()),
            *([(b"optiserve-node", node.encode())] if (node := node_tag()) else []),
        ]
        self.inflight = 0  # requests between admission and answer: a draining runner is done when it reaches 0
        self._call_started: float | None = None  # when the model call now running began (None: none runs)
        self.traffic = Traffic()
        self._metrics = metrics()
        self.hardware_warning = serving_mismatch(self.manifest.requires, self.manifest.hardware, detect())
        if self.hardware_warning:
            log.warning("%s: %s", self.name, self.hardware_warning)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"optiserve-{self.name}")
        # image models: files are decoded and resized here, beside the model thread and off the event loop
        self._decoder = (
            ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix=f"optiserve-{self.name}-decode")
            if self.manifest.image is not None
            else None
        )
        self._package_settings = self.manifest.serving
        self._wait = AdaptiveWait(self.manifest.serving.batch_wait_timeout_s)
        self._queue_wait = self._metrics.queue_wait.labels(**self.labels)
        self._tokens_per_char = TOKENS_PER_CHAR
        # How far an output moves when its input shares a model call with others (dynamic int8 with per-call
        # scales): the tolerance between a cached answer and a fresh one. Measured in _calibrate.
        self.batch_mate_cosine = 1.0
        self.work = self._calibrate()
        self.warm_up()
        self._batcher = FairBatcher(self._run_batch, 32, 10.0, wait_s=self._batch_wait_s, on_start=self._started)
        self.cache = ResponseCache(0, fingerprint(self.manifest))
        self._evictions_seen = 0
        self.apply({})
        self._info().set(1)  # only now: a package that fails its warm-up is never described as served
        log.info(
            "model ready: %s %s (%s, %s, %s on %s; %.2g s of work per %s, %.2g s per model call)",
            self.name,
            self.manifest.version,
            self.manifest.task,
            self.manifest.runtime,
            self.manifest.precision,
            self.pipeline.runtime.device,
            self.work.seconds_per_unit,
            "token" if isinstance(self.pipeline, TextPipeline) else "item",
            self.work.overhead_s,
        )

    def apply(self, overrides: dict[str, Any]) -> None:
        """Retune batching and admission; keys left out take the package's values."""
        settings = ServingDefaults.model_validate({**self._package_settings.model_dump(), **overrides})
        self.settings = settings
        self._wait.max_wait_s = settings.batch_wait_timeout_s
        self._batcher.max_batch_size = settings.max_batch_size
        self._batcher.queue_timeout_s = settings.queue_timeout_s
        self.cache.resize(int(self._cache_mb(settings.cache_mb) * 2**20))
        self._record_cache()

    def _cache_mb(self, configured: float | None) -> float:
        """The response cache's size: as configured, else ``DEFAULT_CACHE_MB`` for a package whose outputs do
        not depend on their batch-mates and none for one whose do (dynamic int8 with per-call activation scales
        quantizes each model call with scales from all its rows: a cached answer would differ from a fresh one by
        more than rounding). The
        number is the chain's (``fidelity.batch_invariance``, measured on held-out inputs as served); a package
        without it is judged by how it was quantized and by this replica's own probe."""
        if configured is not None:
            return configured
        measured = self.manifest.fidelity.batch_invariance if self.manifest.fidelity is not None else None
        if measured is None:
            per_call = any(  # per-call activation scales (packages from before per-row scales had no such key)
                step.name == "quantize_dynamic" and step.config.get("activation_scales", "tensor") == "tensor"
                for step in self.manifest.chain
            )
            measured = 0.0 if per_call else self.batch_mate_cosine
        return 0.0 if measured < BATCH_INVARIANT_COSINE else DEFAULT_CACHE_MB

    def _batch_wait_s(self) -> float:
        return self._wait.wait_s() if self.settings.adaptive_wait else self.settings.batch_wait_timeout_s

    def _calibrate(self) -> WorkMeter:
        """The work estimate to start from: a one-input call and a probe batch give the fixed cost per call and the
        cost per unit (token or item; :func:`~modelpkg.pipeline.measure_call_cost`, fastest of a few calls each: a
        replica that starts on a busy machine, beside an upgrade say, would otherwise read one stalled call as its
        speed and refuse ordinary requests as too much work until its batches taught it otherwise); the estimate
        then follows the batches served (:class:`WorkMeter`). For text, the same cost decides where batches are
        cut into model calls (:func:`~modelpkg.pipeline.plan_chunks`), and the probe beside longer texts in one
        call measures how far an output moves with its batch-mates."""
        probe = self._probe(1)[0]
        cost, alone = measure_call_cost(self.pipeline, probe, CALIBRATION_ITEMS)
        if isinstance(self.pipeline, TextPipeline):
            longer = (f"{PROBE_TEXT} {PROBE_TEXT[: 7 * i]}" for i in range(1, 8))
            mates, _ = self.pipeline.run([probe, *map(self._probe_item, longer)])
            self.batch_mate_cosine = _cosine(alone, mates[0])
            self.pipeline.call_cost_tokens = cost.call_in_units  # batches are cut into calls by it (plan_chunks)
        return WorkMeter(cost.seconds_per_unit, cost.overhead_s)

    def warm_up(self) -> None:
        """Run the shapes this runner will serve before it takes traffic: one input at a short, a middle and the
        longest length, and a full model call (``max_call_items``) at the middle length, so lazily compiled
        kernels, captured graphs and allocations are in place. Raises whatever the runtime raises."""
        run: Any = self.pipeline.run
        settings = self.manifest.serving
        encoder = self.pipeline.encoder
        if encoder is None:
            run(self._probe(1))
            run(self._probe(settings.max_call_items), settings.max_call_items, settings.max_batch_tokens)
            return
        words = PROBE_TEXT.split()
        lengths = sorted({8, min(64, encoder.max_length), encoder.max_length})
        texts = [" ".join(words[i % len(words)] for i in range(length)) for length in lengths]
        for text in texts:
            run([self._probe_item(text)])
        middle = self._probe_item(texts[len(texts) // 2])
        run([middle] * settings.max_call_items, settings.max_call_items, settings.max_batch_tokens)

    def _probe(self, count: int) -> list[Any]:
        pipeline = self.pipeline
        if isinstance(pipeline, TextPipeline):
            return [self._probe_item(PROBE_TEXT)] * count
        return [np.zeros(pipeline.item_shape, np.float32)] * count

    def _probe_item(self, text: str) -> TextItem:
        """A probe input for this model: the text, or for a reranker the text as both query and document."""
        return (text, text) if self.manifest.task == "rerank" else text

    async def decode_images(self, files: list[bytes], max_pixels: int, timeout_s: float) -> list[np.ndarray]:
        """An image model's request: each encoded file as the model's input tensor (:mod:`modelpkg.images`), on
        the decoding threads. Raises :class:`~modelpkg.images.InvalidImageError` (400) or
        :class:`~modelpkg.images.ImageTooLargeError` (413) naming the first image that fails, and the latter when
        the request's images take more than ``timeout_s`` to decode."""
        spec, loop = self.manifest.image, asyncio.get_running_loop()
        assert spec is not None and self._decoder is not None, "not an image model"
        jobs = [
            loop.run_in_executor(self._decoder, image_input, data, spec, max_pixels, f"image {index}")
            for index, data in enumerate(files)
        ]
        try:
            async with asyncio.timeout(timeout_s):
                return list(await asyncio.gather(*jobs))
        except TimeoutError:
            raise ImageTooLargeError(
                f"the request's {len(files)} images took more than {timeout_s:g} s to decode "
                "(OPTISERVE_IMAGE_DECODE_TIMEOUT_S); send smaller images or fewer per request"
            ) from None
        finally:
            for job in jobs:
                job.cancel()  # the rest of a failed request's images are not decoded

    def units(self, items: list[Any]) -> list[int]:
        """Each item's estimated work: tokens for text (from its length, at the tokens per character seen so far,
        capped at the model's limit), 1 for a tensor."""
        encoder = self.pipeline.encoder
        if encoder is None:
            return [1] * len(items)
        per_char, cap, special = self._tokens_per_char, encoder.max_length, encoder.special_tokens
        return [min(cap, int(item_chars(item) * per_char) + special) for item in items]

    async def infer(self, texts: list[Any], cache: CacheUse = "use", span: Any = None) -> InferResult:
        """Outputs for ``texts`` (or tensors, for a package without a tokenizer), in order. Inputs found in the
        response cache are answered from it (``cache``: ``use``; ``refresh`` computes afresh and stores;
        ``bypass`` neither reads nor stores), and repeated inputs are computed once. Raises
        :class:`RequestTooLargeError` when the rest is estimated at more than ``max_request_s`` of work;
        :class:`OverloadedError` when more than ``max_queued_s`` of work would run before it is done (batches
        being fair across requests), or the queue would hold more than ``max_queued_items`` items (onto an
        empty queue, a request within ``max_request_s`` is always admitted); and
        :class:`DeadlineExceededError` when none of it started within ``queue_timeout_s``. ``span``: the
        request's trace span, parent of its ``queue`` span and of the ``batch`` span its first item opens."""
        self.inflight += 1
        started = time.perf_counter()
        try:
            result = await self._infer(texts, cache, span)
        except RequestTooLargeError:  # the request's fault, not the model's
            raise
        except Exception:
            self.traffic.errors += 1
            raise
        finally:
            self.inflight -= 1
        self.traffic.record(time.perf_counter() - started)
        return result

    async def _infer(self, texts: list[Any], cache: CacheUse, span: Any = None) -> InferResult:
        started = time.perf_counter()
        keys = [key_of(text) for text in texts]
        lookup = cache == "use" and self.cache.max_bytes > 0
        results: list[ItemResult | None] = [self.cache.get(key) for key in keys] if lookup else [None] * len(keys)
        missing: dict[str | bytes, int] = {}  # each distinct input not found, and one position it is at
        for position, (key, result) in enumerate(zip(keys, results, strict=True)):
            if result is None:
                missing.setdefault(key, position)
        fresh: dict[str | bytes, ItemResult] = {}
        if missing:
            fresh = dict(zip(missing, await self._compute([texts[i] for i in missing.values()], span), strict=True))
            if cache != "bypass":
                for key, result in fresh.items():
                    self.cache.put(key, result)
        if lookup:
            self._record_cache(len(texts) - len(missing), len(missing), time.perf_counter() - started)
        elif fresh and cache == "refresh" and self.cache.max_bytes:
            self._record_cache()
        items = [result if result is not None else fresh[key] for key, result in zip(keys, results, strict=True)]
        return InferResult(
            np.stack([row for row, _, _ in items]),
            sum(tokens for _, tokens, _ in items),
            np.array([cut for _, _, cut in items], dtype=bool),
        )

    async def _compute(self, texts: list[Any], span: Any = None) -> list[ItemResult]:
        """Admit ``texts`` by their estimated work and run them through the batcher."""
        settings, batcher = self.settings, self._batcher
        units = self.units(texts)
        seconds = self.work.seconds(sum(units), -(-len(texts) // settings.max_batch_size))
        if seconds > settings.max_request_s:
            raise RequestTooLargeError(
                f"this request is about {seconds:.1f} s of work ({len(texts)} inputs, about {sum(units)} "
                f"{'tokens' if self.pipeline.encoder is not None else 'items'}) at this replica's speed; "
                f"a request may take at most {settings.max_request_s:g} s (max_request_s): send fewer or shorter "
                "inputs per request"
            )
        if batcher.pending_items:
            ahead_s = self.work.seconds(
                batcher.units_ahead(len(texts)), -(-(batcher.pending_items + len(texts)) // settings.max_batch_size)
            )
            if ahead_s > settings.max_queued_s:
                raise OverloadedError(f"about {ahead_s:.2f} s of work is ahead (limit {settings.max_queued_s:g} s)")
            if batcher.pending_items + len(texts) > settings.max_queued_items:
                raise OverloadedError(f"{batcher.pending_items} items are queued (limit {settings.max_queued_items})")
        self._wait.arrived(len(texts))
        return await batcher.submit(texts, units, span)

    def _record_cache(self, hits: int = 0, misses: int = 0, seconds: float | None = None) -> None:
        m, labels = self._metrics, self.labels
        if hits:
            m.cache_hits.labels(**labels).inc(hits)
        if misses:
            m.cache_misses.labels(**labels).inc(misses)
        if seconds is not None:
            m.cached_request_duration.labels(**labels, cache="miss" if misses else "hit").observe(seconds)
        evicted = self.cache.evictions - self._evictions_seen
        if evicted:
            m.cache_evictions.labels(**labels).inc(evicted)
            self._evictions_seen = self.cache.evictions
        m.cache_entries.labels(**labels).set(len(self.cache))
        m.cache_bytes.labels(**labels).set(self.cache.bytes)

    def _started(self, waited_s: float, span: Any) -> None:
        """A request's first item is in a running batch after ``waited_s`` in the queue."""
        self._queue_wait.observe(waited_s)
        tracing().record("queue", span, waited_s)

    async def _run_batch(self, texts: list[Any], spans: list[Any]) -> list[ItemResult]:
        """Run one dynamic batch on the worker thread; record its metrics, what it cost and (``spans``: of the
        requests in it) its trace spans."""
        started = time.perf_counter()
        m, labels, settings = self._metrics, self.labels, self.settings
        queued = m.queued_items.labels(**labels)
        queued.set(self._batcher.pending_items)  # set per batch, not per request: a metric write costs a syscall
        distinct = list(dict.fromkeys(texts)) if self.pipeline.encoder is not None else texts
        self._call_started = time.monotonic()
        try:
            outputs, stats = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.pipeline.run, distinct, settings.max_call_items, settings.max_batch_tokens
            )
        finally:
            self._call_started = None
        elapsed = time.perf_counter() - started
        if spans:
            self._trace_batch(spans, elapsed, stats)
        queued.set(self._batcher.pending_items - len(texts))  # this batch's items are answered next
        m.inference_duration.labels(**labels).observe(elapsed)
        m.batch_size.labels(**labels).observe(stats.items)
        m.batch_tokens.labels(**labels).observe(stats.real_tokens)
        m.batch_padding_ratio.labels(**labels).observe(stats.padding_ratio)
        for padded in stats.call_padded_tokens:
            m.call_padded_tokens.labels(**labels).observe(padded)
        if settings.adaptive_wait:
            self._wait.finished(stats.padded_tokens, elapsed)
        if self.pipeline.encoder is None:
            self.work.record(stats.items, elapsed)
            return [(outputs[i], 0, False) for i in range(len(texts))]
        self.work.record(stats.real_tokens, elapsed)
        self._learn_tokens_per_char(distinct, stats.token_counts, stats.truncated)
        counts, cut = stats.token_counts, stats.truncated
        row = {text: i for i, text in enumerate(distinct)}  # a text two requests sent in one batch ran once
        return [(outputs[i], int(counts[i]), bool(cut[i])) for i in map(row.__getitem__, texts)]

    def _trace_batch(self, spans: list[Any], elapsed: float, stats: BatchStats) -> None:
        """The batch span (a child of the first request's span, linked to every request's), and its
        ``tokenize`` and ``model`` spans, placed in the batch's time from the seconds the pipeline measured."""
        trace, ended = tracing(), time.time_ns()
        attributes = {
            "optiserve.model": self.name,
            "optiserve.model_version": self.manifest.version,
            "optiserve.batch_size": stats.items,
            "optiserve.requests": len(spans),
            "optiserve.tokens": stats.real_tokens,
            "optiserve.padded_tokens": stats.padded_tokens,
        }
        traced = [span for span in spans if sampled(span)]
        if not traced:
            return
        batch = trace.record("batch", traced[0], elapsed, attributes, links=traced, ended_ns=ended)
        began = ended - int(elapsed * 1e9)
        tokenized = began + int(stats.encode_s * 1e9)
        if stats.encode_s:
            trace.record("tokenize", batch, stats.encode_s, ended_ns=tokenized)
        trace.record("model", batch, stats.model_s, {"optiserve.calls": len(stats.call_padded_tokens) or 1},
                     ended_ns=tokenized + int(stats.model_s * 1e9))  # fmt: skip

    def _learn_tokens_per_char(self, texts: list[TextItem], counts: np.ndarray, truncated: np.ndarray) -> None:
        """Follow the text's tokens per character, without the special tokens every text gets (``units`` adds
        those): counted in, a run of one-word requests ("a" is 3 tokens) would teach 3 tokens per character and
        make an ordinary sentence look ten times its work."""
        assert self.pipeline.encoder is not None
        chars = sum(item_chars(text) for text, cut in zip(texts, truncated, strict=True) if not cut)
        tokens = int(counts[~truncated].sum()) - self.pipeline.encoder.special_tokens * int((~truncated).sum())
        if chars:
            self._tokens_per_char += 0.2 * (tokens / chars - self._tokens_per_char)

    def describe(self) -> dict[str, Any]:
        """What this replica runs for the model: for model metadata."""
        runtime = self.pipeline.runtime
        return {
            "task": self.manifest.task,
            "runtime": self.manifest.runtime,
            "precision": self.manifest.precision,
            "device": runtime.device,
            "device_reason": runtime.device_reason,
            "requires": self.manifest.requires,
            "hardware_warning": self.hardware_warning,
            "gpus": assigned_gpus(),
            "node": node_tag(),
            "providers": list(getattr(runtime, "providers", [])),
            # with what this replica measured a model call to cost, in tokens: where it cuts batches (plan_chunks)
            "batching": {
                **self.settings.model_dump(),
                "call_cost_tokens": getattr(self.pipeline, "call_cost_tokens", None),
            },
            "cache": {
                "max_bytes": self.cache.max_bytes,
                "entries": len(self.cache),
                "fingerprint": self.cache.fingerprint,
                # A cached output is the first one computed; a fresh one may differ by as much as computing the
                # same input among other batch-mates does (measured at start; 1.0 where batch-mates change nothing).
                "batch_mate_cosine_min": round(self.batch_mate_cosine, 6),
            },
        }

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every request admitted here is answered (True), or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.inflight or self._batcher.pending_items:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def close(self) -> None:
        """Let go of the model (on the event loop): the batch worker task and the model thread end, and the info
        metric says it is no longer served. Without the first, the loop kept every replaced model alive."""
        self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
        self._info().set(0)

    def _info(self) -> Any:
        """This runner's ``optiserve_model_info`` series (1 while it serves)."""
        return self._metrics.model_info.labels(
            **self.labels,
            task=self.manifest.task,
            runtime=self.manifest.runtime,
            precision=self.manifest.precision,
            device=self.pipeline.runtime.device,
            chain=">".join(p.name for p in self.manifest.chain) or "none",
        )

    def stalled(self) -> str | None:
        """Why this runner is stuck, or None: a model call running for more than ``STALL_FACTOR`` times the
        longest a request may take (``max_request_s``; calls are bounded by ``max_batch_tokens``, far shorter)."""
        if self._call_started is None:
            return None
        running = time.monotonic() - self._call_started
        limit = STALL_FACTOR * self.settings.max_request_s
        return f"{self.name}: a model call has run for {running:.0f} s (limit {limit:g} s)" if running > limit else None

    async def check_health(self) -> None:
        """Raise if the runtime can no longer compute: it is stuck in a call, or a probe fails."""
        if reason := self.stalled():
            raise RuntimeError(reason)
        run: Any = self.pipeline.run
        await asyncio.get_running_loop().run_in_executor(self._executor, run, self._probe(1))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms else 1.0


def fingerprint(manifest: Manifest) -> str:
    """What fixes a package's results for an input: its files' sha256 and its output options."""
    files = ",".join(f"{f.path}={f.sha256}" for f in manifest.files)
    tokenizer = manifest.tokenizer.model_dump_json() if manifest.tokenizer else ""
    return hashlib.sha256(f"{files}|{manifest.pooling.model_dump_json()}|{tokenizer}".encode()).hexdigest()


def package_id(manifest: Manifest) -> str:
    """A package's short identity (12 hex digits of :func:`fingerprint`): what responses, metrics and
    ``/v2/models/{m}/versions/{v}`` name it by, since two builds of one model usually share ``manifest.version``."""
    return fingerprint(manifest)[:12]


def node_tag(node_id: str | None = None) -> str | None:
    """Which Ray node this replica runs on (None outside Ray), as a short hash: enough to tell nodes apart,
    without handing clients Ray's node id (it names the node's HAProxy and session directories)."""
    import ray

    if node_id is None:
        if not ray.is_initialized():
            return None
        node_id = ray.get_runtime_context().get_node_id()
    return hashlib.sha256(node_id.encode()).hexdigest()[:12]


class ServedModels:
    """The packages one replica serves, by model name, each with its own batch queue. Ray Serve calls
    :meth:`reconfigure` with the deployment's ``user_config``: batching keys at the top level apply to every
    model, and ``models: {name: {...}}`` overrides them per model."""

    def __init__(
        self, package_dirs: list[str], threads: int | None = None, served_names: list[str | None] | None = None
    ) -> None:
        from serving.limits import LIMITS

        self.limits = LIMITS  # this process's limits (methods of Serve's ingress class must not read globals)
        self.models: dict[str, ModelRunner] = {}
        names = list(served_names or []) + [None] * (len(package_dirs) - len(served_names or []))
        for package_dir, name in zip(package_dirs, names, strict=True):
            runner = ModelRunner(package_dir, threads, name)
            if runner.name in self.models:
                raise ValueError(f"two packages serve the model name {runner.name!r}; names must be unique")
            self.models[runner.name] = runner

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = dict(user_config or {})
        per_model = config.pop("models", None) or {}
        unknown = sorted(set(per_model) - set(self.models))
        if unknown:
            raise ValueError(f"user_config.models names {unknown}, not served here ({sorted(self.models)})")
        for name, runner in self.models.items():
            runner.apply({**config, **per_model.get(name, {})})

    def names(self, task: str | None = None) -> list[str]:
        return [name for name, runner in self.models.items() if task is None or runner.manifest.task == task]

    async def check_health(self) -> None:
        """Raise (so Ray Serve restarts the replica) if any model's runtime can no longer compute."""
        for runner in self.models.values():
            await runner.check_health()
