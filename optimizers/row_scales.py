"""Per-row activation scales for ONNX Runtime's dynamic int8 graphs: the same vector for the same input, whoever
else is in the batch.

ONNX Runtime's dynamic quantization puts a ``DynamicQuantizeLinear`` before each int8 MatMul: one scale and zero
point for the whole activation tensor, computed per call from every row in it (every token of every input in the
batch, padding included). An input's vector therefore depends on its batch-mates. This rewrite gives every row
(one token's activation vector, the MatMul's reduction axis) its own symmetric scale, ``max|row| / 127``, stored as
uint8 around a fixed zero point of 128, so ONNX Runtime keeps its fast u8×s8 kernels and its scalar zero point
(``MatMulInteger`` takes no per-row zero point). The int32 products are exact, so a row's result depends only on
that row.

The activation scale ONNX Runtime's graph multiplies into the weight scales becomes 1, and the row scale multiplies
each product after them. The order matters: ONNX Runtime fuses ``MatMulInteger → Cast → Mul(Mul(a_scale,
b_scale)) [→ Add(bias)]`` into ``MatMulIntegerToFloat``, which reads ``a_scale`` as one number; a per-row scale in
its place would be read as its first row's. With ``a_scale = 1`` the fusion stays valid, and the bias is added
after the row scale, as it must be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ZERO_POINT = 128  # uint8 midpoint: symmetric values -127..127 stored as 1..255
LEVELS = 127.0
TINY = 1e-12  # an all-zero row gets this scale instead of a division by zero


def per_row_scales(model_path: Path, out_path: Path) -> int:
    """Rewrite every ``DynamicQuantizeLinear`` of ``model_path`` to per-row symmetric scales; returns how many."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes: list[Any] = []
    row_scale_of: dict[str, str] = {}  # quantized activation -> its row scale
    activation_scales = set()  # the per-call scales ONNX Runtime's graph multiplied into the weight scales
    for node in graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            row_scale_of[node.output[0]] = f"{node.name}/row/scale"
            activation_scales.add(node.output[1])
            nodes += _row_quantizer(node, opset)
        else:
            nodes.append(node)
    nodes = _scale_rows_after_products(nodes, row_scale_of, activation_scales)
    del graph.node[:]
    graph.node.extend(nodes)
    if row_scale_of:
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype), k) for k, (v, dtype) in CONSTANTS.items())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return len(row_scale_of)


CONSTANTS: dict[str, tuple[object, str]] = {
    "row_scales/inv_levels": (1.0 / LEVELS, "float32"),
    "row_scales/tiny": (TINY, "float32"),
    "row_scales/one": (1.0, "float32"),
    "row_scales/zero_point": (ZERO_POINT, "uint8"),
}


def _row_quantizer(node: Any, opset: int) -> list[Any]:
    """The nodes replacing one ``DynamicQuantizeLinear``: ``scale = max|x| / 127`` per row (the last axis, from
    two reductions, so no ``|x|`` tensor is written), ``x × (1 / scale)`` per row, then ONNX's ``QuantizeLinear``
    with scalar scale 1 and zero point 128, which rounds and saturates with ONNX Runtime's vectorised kernel (a
    per-axis ``QuantizeLinear`` over ``[rows, K]`` took twice as long on MiniLM). Its zero point output is 128 and
    its scale output 1: the row scale is applied after the product, see ``_scale_rows_after_products``."""
    from onnx import helper

    x = node.input[0]
    quantized, scale, zero_point = node.output
    p = f"{node.name}/row"

    def reduce(op: str, name: str) -> Any:
        if opset >= 18:  # the reductions' axes became an input
            return helper.make_node(op, [x, f"{p}/last"], [f"{p}/{name}"], keepdims=1)
        return helper.make_node(op, [x], [f"{p}/{name}"], axes=[-1], keepdims=1)

    axes = [helper.make_node("Constant", [], [f"{p}/last"], value_ints=[-1])] if opset >= 18 else []
    steps = [
        *axes,
        reduce("ReduceMax", "high"),
        reduce("ReduceMin", "low"),
        helper.make_node("Neg", [f"{p}/low"], [f"{p}/minus_low"]),
        helper.make_node("Max", [f"{p}/high", f"{p}/minus_low"], [f"{p}/absmax"]),
        helper.make_node("Mul", [f"{p}/absmax", "row_scales/inv_levels"], [f"{p}/raw_scale"]),
        helper.make_node("Max", [f"{p}/raw_scale", "row_scales/tiny"], [f"{p}/scale"]),  # [..., 1]
        helper.make_node("Reciprocal", [f"{p}/scale"], [f"{p}/inverse"]),
        helper.make_node("Mul", [x, f"{p}/inverse"], [f"{p}/levels"]),  # -127..127, unrounded
        helper.make_node("QuantizeLinear", [f"{p}/levels", "row_scales/one", "row_scales/zero_point"], [quantized]),
        helper.make_node("Identity", ["row_scales/zero_point"], [zero_point]),
        helper.make_node("Identity", ["row_scales/one"], [scale]),
    ]
    for step in steps:
        step.name = f"{p}/{step.op_type}_{step.output[0].rsplit('/', 1)[-1]}"
    return steps


def _scale_rows_after_products(
    nodes: list[Any], row_scale_of: dict[str, str], activation_scales: set[str]
) -> list[Any]:
    """Each ``MatMulInteger`` reading a row-quantized input, with the ``Cast`` and ``Mul(activation scale × weight
    scales)`` ONNX Runtime's quantizer wrote after it, becomes ONNX Runtime's own fused ``MatMulIntegerToFloat``
    (activation scale 1, the weight scales) followed by ``Mul(row scale)`` under the old ``Mul``'s output name, so
    any bias ``Add`` comes after the row scale. Products in another form keep their nodes and get the row ``Mul``
    after the ``Cast``. Nodes stay in topological order."""
    from onnx import helper

    readers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for n in nodes:
        producer.update((name, n) for name in n.output)
        for name in n.input:
            readers.setdefault(name, []).append(n)
    replaced: dict[int, list[Any]] = {}  # id(node) -> what it becomes
    for mmi in [n for n in nodes if n.op_type == "MatMulInteger" and n.input[0] in row_scale_of]:
        row_scale = row_scale_of[mmi.input[0]]
        (cast,) = readers[mmi.output[0]]
        after = readers.get(cast.output[0], [])
        mul = after[0] if len(after) == 1 and after[0].op_type == "Mul" else None
        scales = producer.get(next((i for i in mul.input if i != cast.output[0]), "")) if mul else None
        fusable = scales is not None and scales.op_type == "Mul" and len(readers[scales.output[0]]) == 1
        if mul is None or scales is None or not fusable or not activation_scales.intersection(scales.input):
            rows = helper.make_node("Mul", [f"{cast.output[0]}/float", row_scale], [cast.output[0]])
            cast.output[0] = f"{cast.output[0]}/float"
            replaced[id(cast)] = [cast, rows]
            continue
        weight_scale = next(i for i in scales.input if i not in activation_scales)
        fused = helper.make_node(
            "MatMulIntegerToFloat",
            [mmi.input[0], mmi.input[1], "row_scales/one", weight_scale, *mmi.input[2:4]],
            [f"{mul.output[0]}/unscaled"],
            name=f"{mmi.name}/to_float",
            domain="com.microsoft",
        )
        rows = helper.make_node("Mul", [fused.output[0], row_scale], [mul.output[0]], name=f"{mmi.name}/rows")
        replaced[id(mmi)] = []
        replaced[id(cast)] = []
        replaced[id(scales)] = []
        replaced[id(mul)] = [fused, rows]
    return [m for n in nodes for m in replaced.get(id(n), [n])]
