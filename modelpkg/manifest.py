"""The model package's manifest: what a package holds and how it is served, as pydantic models (``manifest.json``).

This is the contract between the optimizer that writes packages and the server that reads them; reading and
writing the files is :mod:`modelpkg.package`, shaping a request's texts and vectors is :mod:`modelpkg.pipeline`,
and judging a fidelity against a budget is the optimizer's (``optimizers/budget.py``).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelpkg.hardware import FEATURES, HardwareProfile

SCHEMA_VERSION = 1


Task = Literal["embedding", "classification", "rerank"]
# Tasks whose model ends in a classification head (``*ForSequenceClassification``, output ``logits``): a classifier
# (two or more labels) or a cross-encoder reranker (one relevance logit per (query, document) pair).
LOGIT_TASKS: tuple[Task, ...] = ("classification", "rerank")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: str
    shape: list[int | str] = Field(description="dimension sizes; a string names a dynamic axis")


class TokenizerSpec(_Strict):
    path: str = Field(description="tokenizer.json, relative to the package root")
    max_length: int = Field(gt=0)
    pad_token_id: int = Field(ge=0)


class PoolingSpec(_Strict):
    """How token vectors become one sentence vector (inside the exported graph): the mean of the real tokens,
    the first (``cls``) token, the element-wise max, or the last real token (``lasttoken``: the last position the
    attention mask keeps), then L2 normalization if ``normalize``."""

    mode: Literal["mean", "cls", "max", "lasttoken"] = "mean"
    normalize: bool = True


class PassRecord(_Strict):
    name: str
    config: dict[str, object]
    duration_s: float
    details: dict[str, object] = Field(default={}, description="what the pass reports: tries, exclusions, curves")
    cached: bool = Field(default=False, description="reused from the chain's content-addressed cache")


class WidthFidelity(_Strict):
    """Fidelity of a Matryoshka model's vectors cut to ``width`` (and re-normalized), against the source's cut the
    same way: what a request with ``dimensions: width`` gets."""

    width: int = Field(gt=0)
    cosine_mean: float
    cosine_min: float
    recall_at_10: float | None = None
    source_recall_at_10: float | None = None


Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]


class ImageSpec(_Strict):
    """How an encoded image becomes the model's ``[3, height, width]`` float32 input, step by step, as the source's
    image processor does it (``processor`` names it and its backend): decode (JPEG, PNG or WebP), turn by its EXIF
    orientation, convert to RGB (transparency over white), resize, center-crop, rescale, normalize per channel.
    The replica runs these steps itself (:mod:`modelpkg.images`: Pillow and numpy, no transformers)."""

    processor: str = Field(description="what these steps reproduce, e.g. 'ConvNextImageProcessor (PIL backend)'")
    shortest_edge: int | None = Field(default=None, gt=0, description="resize so the shorter side is this long")
    resize: tuple[int, int] | None = Field(default=None, description="resize to (height, width), aspect ignored")
    resample: Resample = "bilinear"
    crop: tuple[int, int] | None = Field(default=None, description="center crop to (height, width)")
    rescale: float | None = Field(default=1 / 255, gt=0, description="multiply the 0..255 pixels by this")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _fixed_size(self) -> ImageSpec:
        if self.shortest_edge is not None and self.resize is not None:
            raise ValueError("resize by shortest_edge or to (height, width), not both")
        if self.crop is None and self.resize is None:
            raise ValueError("the steps must end in a fixed size: a resize to (height, width) or a crop")
        if (self.mean is None) != (self.std is None):
            raise ValueError("normalization needs both mean and std")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """The (height, width) the model takes."""
        size = self.crop or self.resize
        assert size is not None
        return size


# An output that moves less than this (cosine) between running alone and running among other inputs differs by
# rounding, not by its batch-mates: the default budget requires it, and the response cache is on by default above it.
BATCH_INVARIANT_COSINE = 0.9999


class Fidelity(_Strict):
    """Agreement of this model's outputs with the source model's, on held-out data: row-wise cosine of the output
    vectors (embeddings or logits), max absolute / relative error, and per task: for embeddings, how many of each
    item's 10 nearest neighbours stay the same, and for text embeddings a retrieval check (``recall_at_10``, with
    the source's on the same pairs beside it: optimizers/fidelity.py ``retrieval_pairs``); for classifiers, how
    often the top label is the same (and the accuracy against true labels where the data has them); for
    rerankers, per query (a group of documents: optimizers/fidelity.py ``rerank_pairs``) how alike the two
    rankings of its documents are (``kendall_tau``) and how often the top document is the same (``top1_agreement``);
    their cosine is that of each query's vector of scores."""

    cosine_mean: float
    cosine_p1: float
    cosine_min: float
    samples: int
    top1_agreement: float | None = None
    top5_agreement: float | None = Field(
        default=None, description="classifiers of more than 5 labels: mean overlap of the two top-5 label sets"
    )
    nn_agreement_at10: float | None = None
    labelled_accuracy: float | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    recall_at_10: float | None = Field(
        default=None, description="text embeddings: share of queries whose own passage is among their 10 nearest"
    )
    source_recall_at_10: float | None = Field(default=None, description="the same for the source model")
    kendall_tau: float | None = Field(
        default=None, description="rerankers: mean Kendall tau between the source's and this ranking of each query"
    )
    widths: list[WidthFidelity] = Field(default=[], description="Matryoshka models: at each declared width")
    batch_invariance: float | None = Field(
        default=None,
        description="lowest cosine between an input's output computed alone and among other held-out inputs as a "
        "replica batches them (1.0: the same answer whoever else asked; dynamic int8 with per-call scales about 0.99)",
    )

    @property
    def judged_by(self) -> tuple[str, ...]:
        """The one rule for which numbers count: rerankers are judged and ranked by Kendall tau (and, against a
        budget, top-1 agreement), classifiers by top-1 agreement, everything else by cosine mean (and, against a
        budget, cosine min and, where measured, recall@10). The first is :attr:`score`."""
        if self.kendall_tau is not None:
            return ("kendall_tau", "top1_agreement")
        if self.top1_agreement is not None:
            return ("top1_agreement",)
        return ("cosine_mean", "cosine_min") + (("recall_at_10",) if self.recall_at_10 is not None else ())

    @property
    def score(self) -> float:
        """The one number that ranks models by fidelity: Kendall tau for rerankers, top-1 agreement for classifiers,
        else cosine mean."""
        return float(getattr(self, self.judged_by[0]))


class FidelityBudget(_Strict):
    """Embedding models are judged by cosine, classifiers by top-1 agreement with the source model, rerankers by
    the agreement of their rankings (Kendall tau, and the top document by ``min_top1_agreement``)."""

    min_cosine_mean: float = Field(default=0.99, ge=-1.0, le=1.0)
    min_cosine_min: float = Field(default=0.95, ge=-1.0, le=1.0)
    min_top1_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    min_kendall_tau: float = Field(default=0.95, ge=-1.0, le=1.0, description="rerankers")
    min_nn_agreement_at10: float | None = Field(default=None, ge=0.0, le=1.0, description="embeddings, optional")
    min_labelled_accuracy: float | None = Field(default=None, ge=0.0, le=1.0, description="labelled data, optional")
    max_abs_error: float | None = Field(default=None, gt=0.0, description="optional, any task")
    min_recall_at_10: float | None = Field(
        default=None, ge=0.0, le=1.0, description="text embeddings, optional: the retrieval check's recall@10"
    )
    min_batch_invariance: float | None = Field(
        default=BATCH_INVARIANT_COSINE,
        ge=-1.0,
        le=1.0,
        description="outputs may move at most by rounding with their batch-mates; null allows batch-dependent "
        "candidates (dynamic int8 with per-call scales)",
    )


class ProfileRow(_Strict):
    """Throughput and per-call latency when held-out texts arrive in dynamic batches of ``batch_size`` and run in
    model calls of at most ``call_items`` rows (after sorting by length)."""

    batch_size: int
    call_items: int
    threads: int = 1
    batches: int = 0
    items_per_s: float
    p50_ms: float
    p99_ms: float
    peak_memory_mb: float | None = Field(default=None, description="process RSS growth while loading and running")


ReplicaLayout = Literal["replicas", "threads"]


class ServingDefaults(_Strict):
    """What the server uses unless the operator overrides it."""

    max_batch_size: int = Field(default=32, gt=0, description="items per dynamic batch")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, description="longest wait to fill a batch")
    adaptive_wait: bool = Field(
        default=True, description="wait only while it pays, predicted from recent batches (serving/batching.py)"
    )
    max_call_items: int = Field(default=8, gt=0, description="rows per model call, after sorting by length")
    max_batch_tokens: int = Field(default=8192, gt=0, description="padded tokens per model call")
    max_queued_items: int = Field(
        default=512, gt=0, description="items waiting or running in a replica before new requests get 503"
    )
    max_queued_s: float = Field(
        default=2.0,
        gt=0,
        description="a request that would wait behind more than this many estimated seconds of work gets 503",
    )
    max_request_s: float = Field(
        default=10.0, gt=0, description="a request estimated to take longer than this alone is refused (413)"
    )
    queue_timeout_s: float = Field(
        default=10.0, gt=0, description="a request none of which started within this long is dropped (504)"
    )
    replica_layout: ReplicaLayout | None = Field(
        default=None,
        description="how `optiserve serve` uses a node's cores when neither --replicas nor --threads is given: "
        "replicas (one single-thread replica per core) or threads (one replica, a thread per core); measured by "
        "the chain; unset: one single-thread replica. Not retunable live",
    )
    cache_mb: float | None = Field(
        default=None,
        ge=0,
        description="results cached per model by input, in MiB; 0: none; unset: 64 where batch-mates change "
        "no output (not for dynamic int8 with per-call scales), else none",
    )


# The default CUDA graph shape buckets (batch rows, sequence tokens), here once: the manifest's torch options, the
# cuda_graphs pass and modelpkg.runtimes.buckets.ShapeBuckets take them from here.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
SEQUENCE_BUCKETS = (16, 32, 64, 128, 256)


class TorchOptions(_Strict):
    """GPU settings of the torch runtime; on CPU they are not applied, and the replica says so."""

    cuda_graphs: bool = Field(default=False, description="replay captured graphs, one per shape bucket")
    batch_buckets: list[int] = list(BATCH_BUCKETS)
    sequence_buckets: list[int] = list(SEQUENCE_BUCKETS)
    compile: bool = Field(default=False, description="torch.compile the model (dynamic shapes)")
    compile_mode: str = "max-autotune-no-cudagraphs"


class OpenVINOOptions(_Strict):
    """How the OpenVINO runtime compiles the model: the precision it computes in where the model itself does not
    fix it (``bf16`` uses AMX/AVX-512 BF16 units; an int8 model keeps its int8 layers either way)."""

    inference_precision: Literal["f32", "bf16", "f16"] = "f32"


class TensorRTOptions(_Strict):
    """ONNX Runtime's TensorRT execution provider as the ``tensorrt`` pass built its engines: precision, one
    min/opt/max shape profile per input (``"input_ids:1x1,attention_mask:1x1,…"``) and the engine cache the
    package carries, so a replica on the same GPU model and TensorRT version loads the engines instead of
    building them."""

    fp16: bool = True
    min_shapes: str
    opt_shapes: str
    max_shapes: str
    engine_cache: str = Field(default="trt_cache", description="directory in the package, relative to its root")


class OnnxRuntimeOptions(_Strict):
    """How the ONNX Runtime runtime opens the model; ``tensorrt`` applies where a GPU is assigned and the
    TensorRT provider is present (elsewhere the replica says why it runs without it)."""

    tensorrt: TensorRTOptions | None = None


class Source(_Strict):
    path: str
    sha256: str


class FileEntry(_Strict):
    path: str
    sha256: str
    size: int


class ModelDescription(_Strict):
    """What a model is, as the source model and every package made from it describe it (one description: the
    optimizer reads it from the source and the manifest carries it unchanged)."""

    name: str = Field(min_length=1)
    task: Task = "embedding"
    tokenizer: TokenizerSpec | None = Field(
        default=None, description="text models; a package without one takes its single float32 input tensor as is"
    )
    pooling: PoolingSpec = PoolingSpec()
    prompts: dict[str, str] = Field(
        default={},
        description="text embeddings: named prompts declared by the model (sentence-transformers' "
        "config_sentence_transformers.json), e.g. {'query': 'query: '}; see apply_prompt",
    )
    default_prompt_name: str | None = Field(default=None, description="the prompt applied when none is named")
    embedding_dim: int | None = Field(default=None, gt=0, description="embedding models: vector width")
    matryoshka_dims: list[int] = Field(
        default=[],
        description="embedding models trained to be cut (Matryoshka): the widths they were trained at; a request's "
        "dimensions may then be any width up to embedding_dim (cut_vectors). Empty: dimensions must be "
        "embedding_dim",
    )
    labels: list[str] = Field(default=[], description="classifiers: label of each logit, in order")
    image: ImageSpec | None = Field(
        default=None, description="image models: how an encoded image becomes the input tensor (modelpkg.images)"
    )
    score_activation: Literal["sigmoid", "identity"] = Field(
        default="sigmoid",
        description="rerankers: what turns the relevance logit into the score (sentence-transformers' "
        "CrossEncoder activation_fn; a request's raw_scores returns the logit)",
    )

    @model_validator(mode="after")
    def _task_fields(self) -> ModelDescription:
        if self.task == "embedding" and (self.embedding_dim is None or self.labels):
            raise ValueError("an embedding package needs embedding_dim and no labels")
        if self.task == "classification" and (len(self.labels) < 2 or self.embedding_dim is not None):
            raise ValueError("a classification package needs two or more labels and no embedding_dim")
        if self.task == "rerank" and (self.labels or self.embedding_dim is not None or self.tokenizer is None):
            raise ValueError("a rerank package takes text, has one relevance logit, and no labels or embedding_dim")
        if self.image is not None and self.tokenizer is not None:
            raise ValueError("a package takes text (a tokenizer) or images (an image spec), not both")
        return self

    @model_validator(mode="after")
    def _matryoshka(self) -> ModelDescription:
        width = self.embedding_dim or 0
        if self.matryoshka_dims and not all(0 < d <= width for d in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} must be widths of 1..{width} (embedding_dim)")
        return self

    @model_validator(mode="after")
    def _prompts(self) -> ModelDescription:
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {self.default_prompt_name!r} is not one of prompts {self.prompts}")
        return self

    @property
    def output_dim(self) -> int:
        """Width of one output row: the embedding size, the number of labels, or 1 (a reranker's logit)."""
        if self.task == "rerank":
            return 1
        return self.embedding_dim if self.embedding_dim is not None else len(self.labels)


class Manifest(ModelDescription):
    """A model package's ``manifest.json``: the model's description and how this package was made and is served."""

    schema_version: int = SCHEMA_VERSION
    version: str = "1"
    created_at: str
    source: Source
    chain: list[PassRecord]
    format: Literal["onnx", "safetensors", "openvino"]
    runtime: Literal["onnxruntime", "torch", "openvino"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    model_path: str = Field(description="model file or directory, relative to the package root")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fidelity: Fidelity | None = None
    budget: FidelityBudget | None = None
    profile: list[ProfileRow] = []
    serving: ServingDefaults = ServingDefaults()
    torch_options: TorchOptions = TorchOptions()
    openvino_options: OpenVINOOptions = OpenVINOOptions()
    onnxruntime_options: OnnxRuntimeOptions = OnnxRuntimeOptions()
    hardware: HardwareProfile | None = Field(default=None, description="the machine the profile was measured on")
    requires: list[str] = Field(
        default=[], description="hardware features the profile relies on; a replica without one warns and serves"
    )
    libraries: dict[str, str] = {}
    files: list[FileEntry] = []

    @model_validator(mode="after")
    def _inputs(self) -> Manifest:
        if self.tokenizer is None and (len(self.inputs) != 1 or self.inputs[0].dtype != "float32"):
            raise ValueError("a package without a tokenizer takes exactly one float32 input tensor")
        return self

    @property
    def takes_text(self) -> bool:
        return self.tokenizer is not None

    @property
    def takes_images(self) -> bool:
        """Clients send encoded image files, which the replica decodes into the input tensor (``image``)."""
        return self.image is not None

    @property
    def required_files(self) -> list[str]:
        return [self.model_path, *self.weights_files] + ([self.tokenizer.path] if self.tokenizer else [])

    @property
    def weights_files(self) -> list[str]:
        """Raw weight files beside the model file: an OpenVINO IR's ``.bin`` (plain tensors, not a pickle)."""
        if self.format == "openvino":
            return [str(PurePosixPath(self.model_path).with_suffix(".bin"))]
        return []

    @model_validator(mode="after")
    def _features(self) -> Manifest:
        unknown = sorted(set(self.requires) - {*FEATURES, "cuda"})
        if unknown:
            raise ValueError(f"requires names unknown hardware features {unknown}; known: {[*FEATURES, 'cuda']}")
        if self.format == "openvino" and not self.model_path.endswith(".xml"):
            raise ValueError(f"an openvino package's model_path is an IR .xml file, got {self.model_path!r}")
        return self
