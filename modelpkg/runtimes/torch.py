"""PyTorch eager runtime (embedding encoders and sequence classifiers): the unoptimized baseline, and the
reference the chain measures fidelity against."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelpkg.manifest import LOGIT_TASKS, PoolingSpec, TorchOptions
from modelpkg.runtimes.base import ModelRuntime
from modelpkg.runtimes.buckets import ShapeBuckets
from modelpkg.runtimes.cuda_graphs import CudaGraphs
from modelpkg.tokenizer import EncodedBatch, model_input_names


def _keywords(
    names: tuple[str, ...], input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The encoder's keyword arguments: token types only for models that take them (``input_names``)."""
    keywords = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in names and token_type_ids is not None:
        keywords["token_type_ids"] = token_type_ids
    return keywords


def _config(model: Any) -> dict[str, Any]:
    """A transformers model's config as the ``config.json`` dict."""
    return dict(model.config.to_dict())


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per row of ``hidden`` [batch, sequence, width] as sentence-transformers' ``Pooling`` computes it:
    the first token, the max or mean over the real tokens, or the last real token (the last position the mask
    keeps, wherever the padding is)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    if mode == "lasttoken":
        # float32 positions (exact well past any sequence length) keep argmax-free, ONNX-friendly arithmetic
        positions = torch.arange(hidden.shape[1], device=hidden.device, dtype=torch.float32).unsqueeze(0)
        last = (positions * attention_mask.to(torch.float32)).amax(dim=1).to(torch.long)
        index = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(torch.nn.Module):
    """A transformers encoder followed by the pooling and normalization its sentence-transformers config declares.

    ``forward`` takes the tensors of ``input_names`` by position (ids, mask and, for models with token types,
    token types) and calls the encoder with keywords, which is what ``torch.onnx.export`` needs with
    transformers 5 (positional calls collide with new parameters).
    """

    def __init__(self, encoder: torch.nn.Module, pooling: PoolingSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.mode = pooling.mode
        self.normalize = pooling.normalize
        self.input_names = model_input_names(_config(encoder))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        keywords = _keywords(self.input_names, input_ids, attention_mask, token_type_ids)
        hidden = self.encoder(**keywords).last_hidden_state
        pooled = pool(hidden, attention_mask, self.mode)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class SequenceClassifier(torch.nn.Module):
    """A transformers sequence classifier returning its logits, with the same positional ``forward``."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.input_names = model_input_names(_config(classifier))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.classifier(**_keywords(self.input_names, input_ids, attention_mask, token_type_ids)).logits


def load_encoder(model_dir: Path) -> torch.nn.Module:
    """A transformers encoder (``AutoModel``) from safetensors, without the pooler head where it has one
    (BERT, RoBERTa, MPNet; DistilBERT has none)."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(model_dir)
    model_class: Any = MODEL_MAPPING[type(config)]  # the class (typed as a union of lazy values)
    extra = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}
    return load_pretrained(AutoModel, model_dir, config, **extra)


def load_pretrained(auto_class: Any, model_dir: Path, config: Any = None, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` from safetensors, or, for a model whose attention heads were pruned,
    :func:`modelpkg.runtimes.heads.load_pruned`."""
    from transformers import AutoConfig

    from modelpkg.runtimes.heads import HEADS_PER_LAYER, load_pruned

    config = config if config is not None else AutoConfig.from_pretrained(model_dir)
    if getattr(config, HEADS_PER_LAYER, None):
        return load_pruned(auto_class, model_dir, config, **kwargs)
    return auto_class.from_pretrained(model_dir, use_safetensors=True, **kwargs)


class ImageClassifier(torch.nn.Module):
    """A transformers image classifier taking ``pixel_values`` and returning its logits."""

    input_names = ("pixel_values",)

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixel_values=pixel_values).logits


def is_image_classifier(model_dir: Path) -> bool:
    """Whether ``model_dir``'s config names a ``*ForImageClassification`` architecture."""
    config_file = Path(model_dir) / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") if config_file.is_file() else None
    return any(str(a).endswith("ForImageClassification") for a in architectures or [])


def load_model(
    model_dir: Path, task: str, pooling: PoolingSpec
) -> SentenceEncoder | SequenceClassifier | ImageClassifier:
    """Load a transformers model from safetensors only (never a pickle): an encoder wrapped with its pooling, a
    sequence classifier returning logits, or an image classifier returning logits."""
    if is_image_classifier(model_dir):
        from transformers import AutoModelForImageClassification

        return ImageClassifier(AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)).eval()
    if task in LOGIT_TASKS:
        from transformers import AutoModelForSequenceClassification

        return SequenceClassifier(load_pretrained(AutoModelForSequenceClassification, model_dir)).eval()
    return SentenceEncoder(load_encoder(model_dir), pooling).eval()


class TorchRuntime(ModelRuntime):
    name = "torch"

    def __init__(
        self,
        model_dir: Path,
        pooling: PoolingSpec,
        threads: int,
        task: str = "embedding",
        device: str = "cpu",
        options: TorchOptions | None = None,
        pad_token_id: int = 0,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = device
        model = load_model(model_dir, task, pooling)
        self.input_names = model.input_names  # positional inputs, in order (token types only where taken)
        self.model: Any = model.to(device)
        self.graphs: CudaGraphs | None = None
        self.options = options or TorchOptions()
        self.skipped_options = ""  # why requested GPU options are not applied (shown with the device reason)
        if self.options.compile or self.options.cuda_graphs:
            self._apply_gpu_options(pad_token_id)

    def _apply_gpu_options(self, pad_token_id: int) -> None:
        if not self.device.startswith("cuda"):
            self.skipped_options = "torch.compile / CUDA graphs need CUDA: running eager"
            return
        if self.options.compile:
            self.model = torch.compile(self.model, mode=self.options.compile_mode, dynamic=True)
        if self.options.cuda_graphs:
            buckets = ShapeBuckets(tuple(self.options.batch_buckets), tuple(self.options.sequence_buckets))
            self.graphs = CudaGraphs(self.model, buckets, self.device, pad_token_id, self.input_names)

    def run_array(self, inputs: np.ndarray) -> np.ndarray:
        """A tensor model's outputs (an image classifier's logits) for a stacked float32 batch."""
        dtype = next(self.model.parameters()).dtype  # bf16/fp16 weights take inputs of their type
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device, dtype))
        return out.float().cpu().numpy()

    def run(self, batch: EncodedBatch) -> np.ndarray:
        if self.graphs is not None and (replayed := self.graphs.run(batch)) is not None:
            return replayed
        feeds = batch.feeds(self.input_names)
        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(feeds[name]).to(self.device) for name in self.input_names))
        return out.float().cpu().numpy()
