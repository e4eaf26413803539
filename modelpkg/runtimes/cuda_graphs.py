"""CUDA graph capture for the torch runtime: one graph per shape bucket, captured when the replica starts, then
each model call is padded to its bucket, copied into the graph's static inputs and replayed. Removes the
per-kernel launch cost that dominates small batches of a small model on a fast GPU."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from modelpkg.runtimes.buckets import ShapeBuckets, pad_to
from modelpkg.tokenizer import TEXT_INPUTS, EncodedBatch

log = logging.getLogger(__name__)
WARMUP_RUNS = 3


class CudaGraphs:
    """Captured graphs of ``model`` for every bucket shape, on ``device`` (CUDA only)."""

    def __init__(
        self,
        model: Any,
        buckets: ShapeBuckets,
        device: str,
        pad_token_id: int,
        input_names: tuple[str, ...] = TEXT_INPUTS,
    ) -> None:
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need a CUDA device; this runtime runs on {device}")
        self.model = model
        self.buckets = buckets
        self.device = device
        self.pad_token_id = pad_token_id
        self.input_names = input_names  # the model's positional inputs (no token types for RoBERTa, DistilBERT, …)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], tuple[Any, tuple[Any, ...], Any]] = {}
        for rows, width in sorted(buckets.shapes, key=lambda shape: -shape[0] * shape[1]):  # largest first
            self._capture(rows, width)
        log.info("captured %d CUDA graphs (batch %s x sequence %s)", len(self.graphs), buckets.batch, buckets.sequence)

    def _capture(self, rows: int, width: int) -> None:
        import torch

        static = tuple(torch.zeros((rows, width), dtype=torch.long, device=self.device) for _ in self.input_names)
        static[1].fill_(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                self.model(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
            output = self.model(*static)
        self.graphs[(rows, width)] = (graph, static, output)

    def run(self, batch: EncodedBatch) -> np.ndarray | None:
        """The outputs for ``batch`` by graph replay, or None when it is larger than every bucket."""
        import torch

        rows, width = batch.input_ids.shape
        bucket = self.buckets.bucket_for(rows, width)
        if bucket is None:
            return None
        padded = pad_to(batch, *bucket, pad_token_id=self.pad_token_id)
        graph, static, output = self.graphs[bucket]
        feeds = padded.feeds(self.input_names)
        for target, name in zip(static, self.input_names, strict=True):
            target.copy_(torch.from_numpy(feeds[name]))
        graph.replay()
        return output[:rows].float().cpu().numpy()
