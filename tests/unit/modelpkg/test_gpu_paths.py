"""The CPU side of the GPU paths: shape buckets and padding for CUDA graphs (a bucketed call returns what the
unpadded call returns), GPU runtime options recorded by the chain and refused with a reason on CPU, and the
capture itself, which runs only where CUDA is (skipped with the reason elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpus import load_split
from modelpkg.manifest import TorchOptions
from modelpkg.runtimes.buckets import ShapeBuckets, pad_to
from modelpkg.runtimes.cuda_graphs import CudaGraphs
from modelpkg.runtimes.factory import create_runtime
from modelpkg.runtimes.torch import TorchRuntime
from modelpkg.tokenizer import TextEncoder
from optimizers.source import SourceModel

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
    from modelpkg.package import load_package
    from modelpkg.runtimes.factory import load_runtime
    from optimizers.chain import optimize
    from optimizers.packaging import write_candidate_package
    from optimizers.recipe import Recipe

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


def test_a_tensorrt_package_records_its_options_carries_its_engines_and_says_why_they_are_unused_on_cpu(
    tiny_source, tmp_path
) -> None:
    """The engines themselves need a GPU; here the pass's output is stood in for by the exported model and a
    placeholder engine file (the boundary: no TensorRT on this machine)."""
    from modelpkg.package import load_package
    from modelpkg.runtimes.factory import load_runtime
    from modelpkg.runtimes.onnx_options import with_tensorrt_options
    from optimizers.candidate import Candidate
    from optimizers.packaging import write_candidate_package
    from optimizers.passes.base import Artifact
    from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx
    from optimizers.passes.gpu import TensorRTConfig, tensorrt_options

    built = tmp_path / "trt"
    model = export_onnx(tiny_source, built / "model.onnx", TEXTS, ExportOnnxConfig())
    (built / "trt_cache").mkdir()
    (built / "trt_cache" / "TensorrtExecutionProvider_TRTKernel_0.engine").write_bytes(b"engine")
    options = {"tensorrt": tensorrt_options(TensorRTConfig(max_batch=32)).model_dump()}
    artifact = Artifact(model, "onnx", "fp16", options)
    package = write_candidate_package(tiny_source, Candidate("tensorrt-fp16", artifact, chain=[]), tmp_path / "pkg")
    recorded = package.manifest.onnxruntime_options.tensorrt
    assert recorded is not None and recorded.fp16 and "input_ids:32x256" in recorded.max_shapes
    assert (load_package(package.root).root / "trt_cache" / "TensorrtExecutionProvider_TRTKernel_0.engine").is_file()
    providers = with_tensorrt_options(
        ["TensorrtExecutionProvider", "CPUExecutionProvider"], package.model_file, package.manifest.onnxruntime_options
    )
    trt_name, trt_options = providers[0]
    assert trt_name == "TensorrtExecutionProvider"
    assert trt_options["trt_engine_cache_path"] == str(package.root / "trt_cache") and trt_options["trt_fp16_enable"]
    runtime = load_runtime(package, threads=1, gpus=[])
    assert runtime.device == "cpu" and "TensorRT engines are not used" in runtime.device_reason
