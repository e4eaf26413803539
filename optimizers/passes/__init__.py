"""Passes: each is a typed config plus one function from an input artifact to a new output artifact."""

from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx
from optimizers.passes.quantize_dynamic import QuantizeDynamicConfig, quantize_dynamic

__all__ = ["ExportOnnxConfig", "QuantizeDynamicConfig", "export_onnx", "quantize_dynamic"]
