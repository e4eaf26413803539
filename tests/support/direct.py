"""A package's pipeline run in the test process, for comparing with what a server answered."""

from __future__ import annotations

from pathlib import Path

import httpx

from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline


def direct_pipeline(package_root: Path | str, served_at: tuple[str, str] | None = None) -> TextPipeline:
    """The package's pipeline on one thread. With ``served_at`` (server URL, model name) it cuts batches into model
    calls as that server's replica does, by the call cost the replica measured at start (its model metadata): for
    a package whose int8 moves with its batch-mates, only alike calls give the same vectors."""
    pipeline = TextPipeline.from_package(load_package(package_root), threads=1)
    if served_at is not None:
        url, model = served_at
        described = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()["parameters"]["optiserve"]
        pipeline.call_cost_tokens = described["batching"]["call_cost_tokens"]
        assert pipeline.call_cost_tokens is not None and pipeline.call_cost_tokens >= 1.0, described["batching"]
    return pipeline
