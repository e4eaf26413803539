"""Dynamic int8 quantization of an ONNX model's MatMul weights with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class QuantizeDynamicConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    nodes_to_exclude: tuple[str, ...] = ()


def quantize_dynamic(model_path: Path, out_path: Path, config: QuantizeDynamicConfig) -> Path:
    """Write an int8 (signed weights, dynamic activations) copy of ``model_path`` to ``out_path``."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    out_path.parent.mkdir(parents=True, exist_ok=True)
    ort_quantize_dynamic(
        model_input=model_path,
        model_output=out_path,
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.nodes_to_exclude),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out_path
