"""Encoders with attention heads removed: where each family keeps its attention matrices, how to cut heads out of
them, and how to load such a model with stock transformers.

A Hugging Face config has one ``num_attention_heads`` and derives the head size from it, so a model with fewer
heads per layer than its config says cannot be built from the config alone. The families here reshape the
projections by head size, not by head count (``view(..., -1, head_size)``), so the forward pass works with any
number of heads once the matrices are smaller. The config records how many each layer kept
(:data:`HEADS_PER_LAYER`, ignored by transformers); :func:`load_pruned` builds the model, shrinks its attention to
those counts and then loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

HEADS_PER_LAYER = "optiserve_heads_per_layer"  # config.json: attention heads each layer kept, in layer order

# Where a transformer layer's attention matrices are, per family: the module holding them, the names of the
# query, key and value projections (one row block per head), and of the output projection (one column block per
# head). The query's input is also the residual added to the output projection's result before the layer norm.
ATTENTION_SITES = {
    "bert": (("attention", "self"), ("query", "key", "value"), ("attention", "output"), "dense"),
    "distilbert": (("attention",), ("q_lin", "k_lin", "v_lin"), ("attention",), "out_lin"),
}


def _module(layer: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        layer = getattr(layer, name)
    return layer


def attention_family(layer: Any) -> str | None:
    """Which :data:`ATTENTION_SITES` layout ``layer`` has, or None (e.g. MPNet, whose relative position bias is
    shared across layers per head)."""
    for family, (holder, projections, _, _) in ATTENTION_SITES.items():
        try:
            module = _module(layer, holder)
        except AttributeError:
            continue
        if all(hasattr(module, name) for name in projections):
            return family
    return None


def attention_linears(layer: Any) -> tuple[list[Any], Any]:
    """The layer's query, key and value Linears, and its output projection."""
    family = attention_family(layer)
    if family is None:
        raise ValueError(f"no attention layout known in {type(layer).__name__}")
    holder, projections, out_holder, out_name = ATTENTION_SITES[family]
    module = _module(layer, holder)
    return [getattr(module, name) for name in projections], getattr(_module(layer, out_holder), out_name)


def head_count(layer: Any, head_size: int) -> int:
    """How many heads ``layer`` has now."""
    return int(attention_linears(layer)[0][0].out_features // head_size)


def head_columns(heads: list[int], head_size: int) -> torch.Tensor:
    """The indices of ``heads``' rows in a query/key/value matrix (and of their columns in the output one)."""
    import torch

    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads])


def keep_heads(
    layer: Any, heads: list[int], head_size: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> None:
    """Replace ``layer``'s attention matrices with smaller ones holding only ``heads`` (indices, ascending); the
    output projection takes ``weight``/``bias`` where given (a re-fit), else its kept columns."""
    import torch

    projections, output = attention_linears(layer)
    rows = head_columns(heads, head_size)
    family = attention_family(layer)
    assert family is not None
    holder, names, out_holder, out_name = ATTENTION_SITES[family]
    for name, linear in zip(names, projections, strict=True):
        smaller = torch.nn.Linear(linear.in_features, len(rows), dtype=linear.weight.dtype)
        with torch.no_grad():
            smaller.weight.copy_(linear.weight[rows])
            smaller.bias.copy_(linear.bias[rows])
        setattr(_module(layer, holder), name, smaller)
    smaller = torch.nn.Linear(len(rows), output.out_features, dtype=output.weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(output.weight[:, rows] if weight is None else weight.to(output.weight.dtype))
        smaller.bias.copy_(output.bias if bias is None else bias.to(output.bias.dtype))
    setattr(_module(layer, out_holder), out_name, smaller)


def transformer_layers(model: Any) -> list[Any]:
    """A transformers model's layers (``encoder.layer`` or DistilBERT's ``transformer.layer``)."""
    base = getattr(model, "base_model", model)
    for holder in ("encoder", "transformer"):
        layers = getattr(getattr(base, holder, None), "layer", None)
        if layers is not None:
            return list(layers)
    raise ValueError(f"no transformer layers (encoder.layer, transformer.layer) in {type(model).__name__}")


def head_size(config: Any) -> int:
    """The attention head size the config implies (hidden width over the head count)."""
    width = getattr(config, "hidden_size", None) or config.dim
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    return int(width // heads)


def _current_name(key: str) -> str:
    """A weight's name as the model calls it: transformers saves the legacy LayerNorm names (``gamma``, ``beta``)
    of checkpoints that used them, and converts them back only in ``from_pretrained``."""
    if ".LayerNorm." in key and key.endswith((".gamma", ".beta")):
        return key[: key.rindex(".")] + (".weight" if key.endswith(".gamma") else ".bias")
    return key


def load_pruned(auto_class: Any, model_dir: Path, config: Any, **kwargs: Any) -> Any:
    """``auto_class``'s model for ``config`` with each layer's attention cut to :data:`HEADS_PER_LAYER` heads, and
    ``model_dir``'s safetensors weights loaded into it (every weight must fit; nothing is left initialised at
    random)."""
    from safetensors.torch import load_file

    heads = list(getattr(config, HEADS_PER_LAYER))
    model = auto_class.from_config(config, **kwargs)
    layers = transformer_layers(model)
    if len(heads) != len(layers):
        raise ValueError(f"{model_dir}: {HEADS_PER_LAYER} lists {len(heads)} layers; the model has {len(layers)}")
    size = head_size(config)
    for layer, count in zip(layers, heads, strict=True):
        keep_heads(layer, list(range(count)), size)
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{model_dir}: a model with pruned heads loads from one model.safetensors file")
    state = {_current_name(name): tensor for name, tensor in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # buffers transformers recomputes (position ids) may be absent from the file; weights may not
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not fit the pruned model (missing {missing}; extra {unexpected})")
    return model.eval()
