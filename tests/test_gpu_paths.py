"""The CPU side of the GPU paths: shape buckets and padding for CUDA graphs (a bucketed call returns what the
unpadded call returns), GPU runtime options recorded by the chain and refused with a reason on CPU, and the
capture itself, which runs only where CUDA is (skipped with the reason elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpus import load_split
from optimizers.source import SourceModel
from serving.package import TorchOptions
from serving.runtimes.base import create_runtime
from serving.runtimes.buckets import ShapeBuckets, pad_to
from serving.runtimes.cuda_graphs import CudaGraphs
from serving.runtimes.torch import TorchRuntime
from serving.tokenizer import TextEncoder

TEXTS = load_split("heldout")[:5]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def test_bucket_is_the_smallest_that_holds_the_call() -> None:
    buckets = ShapeBuckets(batch=(1, 2, 4, 8), sequence=(16, 32, 64))
    assert buckets.bucket_for(1, 1) == (1, 16)
    assert buckets.bucket_for(3, 17) == (4, 32)
    assert buckets.bucket_for(8, 64) == (8, 64)
    assert buckets.bucket_for(9, 10) is None and buckets.bucket_for(2, 65) is None  # run eagerly instead
    assert len(buckets.shapes) == 12
    for bad in ((), (4, 2), (0, 1), (2, 2)):
        with pytest.raises(ValueError, match="increasing positive"):
            ShapeBuckets(batch=bad)


@pytest.mark.parametrize("fixture", ["tiny_source", "tiny_classifier_source"])
def test_a_call_padded_to_its_bucket_returns_the_unpadded_outputs(fixture, request) -> None:
    source: SourceModel = request.getfixturevalue(fixture)
    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    batch = encoder.pad(encoder.encode(TEXTS))
    runtime = TorchRuntime(source.path, source.pooling, 1, source.task)
    rows, width = ShapeBuckets().bucket_for(*batch.input_ids.shape)
    padded = pad_to(batch, rows, width, encoder.pad_token_id)
    assert padded.input_ids.shape == (rows, width) and rows > len(TEXTS) and width > batch.input_ids.shape[1]
    np.testing.assert_allclose(runtime.run(padded)[: len(TEXTS)], runtime.run(batch), atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        pad_to(batch, 1, width, encoder.pad_token_id)


def test_gpu_options_on_cpu_run_eagerly_and_say_why(tiny_source) -> None:
    options = TorchOptions(cuda_graphs=True, compile=True)
    runtime = create_runtime("torch", tiny_source.path, tiny_source.pooling, 1, gpus=["0"], torch_options=options)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the options apply")
    assert runtime.graphs is None and "need CUDA: running eager" in runtime.device_reason
    assert "torch sees no CUDA device" in runtime.device_reason
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        CudaGraphs(runtime.model, ShapeBuckets(), "cpu", 0)


def test_cuda_graph_pass_records_its_options_in_the_package(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """With CUDA reported present (the GPU is the boundary that is missing here), the pass records the buckets;
    the package carries them; on this CPU the replica's runtime runs eagerly and says so."""
    from optimizers.chain import optimize, write_candidate_package
    from optimizers.recipe import Recipe
    from serving.package import load_package
    from serving.runtimes.base import load_runtime

    monkeypatch.setattr("optimizers.passes.gpu.require_cuda", lambda: None)
    recipe = Recipe.model_validate(
        {
            "profile": {"items": 32, "max_batch": 2},
            "candidates": [{"name": "graphs", "steps": [{"pass": "cuda_graphs", "config": {"batch_buckets": [1, 4]}}]}],
        }
    )
    result = optimize(tiny_model_dir, tmp_path / "pkg", recipe=recipe, cache_dir=tmp_path / "cache")
    graphs = next(c for c in result.candidates if c.name == "graphs")
    assert graphs.artifact.options == {
        "cuda_graphs": True,
        "batch_buckets": [1, 4],
        "sequence_buckets": [16, 32, 64, 128, 256],
    }
    package = write_candidate_package(SourceModel.from_dir(tiny_model_dir), graphs, tmp_path / "graphs")
    assert package.manifest.torch_options.cuda_graphs and package.manifest.torch_options.batch_buckets == [1, 4]
    runtime = load_runtime(load_package(package.root), threads=1, gpus=["0"])
    assert "running on CPU" in runtime.device_reason and "need CUDA: running eager" in runtime.device_reason


@NEEDS_CUDA
def test_cuda_graph_replay_matches_eager_on_the_gpu(tiny_source) -> None:
    options = TorchOptions(cuda_graphs=True, batch_buckets=[1, 8], sequence_buckets=[32, 128])
    graphs = create_runtime("torch", tiny_source.path, tiny_source.pooling, 1, gpus=["0"], torch_options=options)
    eager = create_runtime("torch", tiny_source.path, tiny_source.pooling, 1, gpus=["0"])
    encoder = TextEncoder.from_spec(tiny_source.path, tiny_source.tokenizer)
    batch = encoder.pad(encoder.encode(TEXTS))
    assert graphs.graphs is not None and len(graphs.graphs.graphs) == 4
    np.testing.assert_allclose(graphs.run(batch), eager.run(batch), atol=1e-4)
