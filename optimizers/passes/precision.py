"""Half precision: ONNX float16 (fp32 inputs and outputs kept, so clients and the server see no change) and
torch float16 / bfloat16 weights for the torch runtime."""

from __future__ import annotations

import json
from typing import Literal

from optimizers.passes.base import Artifact, PassConfig, PassContext, PassOutput, out_path, register


class OnnxFloat16Config(PassConfig):
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = ()  # ops kept in fp32 besides ONNX Runtime's defaults


@register("fp16", OnnxFloat16Config, accepts=("onnx",), libraries=("onnx", "onnxruntime"))
def onnx_fp16(artifact: Artifact, config: OnnxFloat16Config, context: PassContext) -> PassOutput:
    """Convert an ONNX model's weights and compute to float16, keeping fp32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(artifact.path))
    converted = convert_float_to_float16(
        model, keep_io_types=config.keep_io_types, op_block_list=list(config.op_block_list) or None
    )
    target = out_path(context, "model.onnx")
    onnx.save(converted, str(target))
    return PassOutput(Artifact(target, "onnx", "fp16"))


class TorchPrecisionConfig(PassConfig):
    dtype: Literal["float16", "bfloat16"] = "bfloat16"


@register("torch_precision", TorchPrecisionConfig, accepts=("hf",), libraries=("torch", "transformers"))
def torch_precision(artifact: Artifact, config: TorchPrecisionConfig, context: PassContext) -> PassOutput:
    """Store a Hugging Face model's weights as float16 or bfloat16 (the torch runtime computes in that type)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = out_path(context, "model")
    target.mkdir(exist_ok=True)
    hf_config = json.loads((artifact.path / "config.json").read_text())
    hf_config.pop("torch_dtype", None)
    hf_config["dtype"] = config.dtype  # transformers loads weights in the config's dtype
    (target / "config.json").write_text(json.dumps(hf_config, indent=2))
    dtype = getattr(torch, config.dtype)
    weights = load_file(str(artifact.path / "model.safetensors"))
    save_file(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
        str(target / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return PassOutput(Artifact(target, "hf", "fp16" if config.dtype == "float16" else "bf16"))
