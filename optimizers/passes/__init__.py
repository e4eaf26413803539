"""Passes: each is a typed config plus one function from an input artifact to a new output artifact, registered
by name (see ``optimizers.passes.base``). Importing this package registers every built-in pass."""

from optimizers.passes import (  # noqa: F401
    distill,
    export_onnx,
    gpu,
    graph_optimize,
    low_rank,
    openvino,
    precision,
    prune,
    quantize,
)
