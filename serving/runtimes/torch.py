"""PyTorch eager runtime (embedding encoders and sequence classifiers): the unoptimized baseline, and the
reference the chain measures fidelity against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.package import PoolingSpec, TorchOptions
from serving.runtimes.base import ModelRuntime
from serving.runtimes.buckets import ShapeBuckets
from serving.runtimes.cuda_graphs import CudaGraphs
from serving.tokenizer import EncodedBatch


class SentenceEncoder(torch.nn.Module):
    """A transformers encoder followed by the pooling and normalization its sentence-transformers config declares.

    ``forward`` takes the three tensors by keyword-free position and calls the encoder with keywords, which is
    what ``torch.onnx.export`` needs with transformers 5 (positional calls collide with new parameters).
    """

    def __init__(self, encoder: torch.nn.Module, pooling: PoolingSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.mode = pooling.mode
        self.normalize = pooling.normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class SequenceClassifier(torch.nn.Module):
    """A transformers sequence classifier returning its logits, with the same three-tensor ``forward``."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def load_model(model_dir: Path, task: str, pooling: PoolingSpec) -> torch.nn.Module:
    """Load a transformers model from safetensors only (never a pickle): an encoder wrapped with its pooling, or
    a sequence classifier returning logits."""
    if task == "classification":
        from transformers import AutoModelForSequenceClassification

        classifier = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        return SequenceClassifier(classifier).eval()
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_dir, use_safetensors=True, add_pooling_layer=False)
    return SentenceEncoder(encoder, pooling).eval()


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
        self.model: Any = load_model(model_dir, task, pooling).to(device)
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
            self.graphs = CudaGraphs(self.model, buckets, self.device, pad_token_id)

    def run(self, batch: EncodedBatch) -> np.ndarray:
        if self.graphs is not None and (replayed := self.graphs.run(batch)) is not None:
            return replayed
        with torch.inference_mode():
            out = self.model(
                torch.from_numpy(batch.input_ids).to(self.device),
                torch.from_numpy(batch.attention_mask).to(self.device),
                torch.from_numpy(batch.token_type_ids).to(self.device),
            )
        return out.float().cpu().numpy()
