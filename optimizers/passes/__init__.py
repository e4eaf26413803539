"""Passes: each is a typed config plus one function from an input artifact to a new output artifact, registered
by name (see ``optimizers.passes.base``). Importing this package registers every built-in pass."""

from optimizers.passes import distill, export_onnx, gpu, graph_optimize, precision, quantize  # noqa: F401
