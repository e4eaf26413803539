"""Compression passes on the tiny BERT: structured FFN pruning with a least-squares re-fit (physically smaller),
and distillation that recovers a pruned model against the source, with augmented training text."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from optimizers.passes.base import Artifact
from optimizers.passes.distill import augmented
from optimizers.recipe import RecipeError, load_plan
from tests.conftest import TINY_CONFIG
from tests.unit.optimizers.test_passes import _context, _run


@pytest.fixture(scope="module")
def pruned(tiny_source, tmp_path_factory):
    context = _context(tiny_source, tmp_path_factory.mktemp("pruned"))
    return _run("prune", Artifact(tiny_source.path, "hf"), context, ffn_keep=0.5, samples=64)


def test_prune_removes_ffn_neurons_physically(pruned) -> None:
    width = TINY_CONFIG["intermediate_size"]
    details = pruned.details
    assert details["ffn_neurons_kept"] == width // 2 and details["ffn_neurons_before"] == width
    hidden, layers = TINY_CONFIG["hidden_size"], TINY_CONFIG["num_hidden_layers"]
    removed = layers * (width // 2) * (2 * hidden + 1)  # rows of one matrix, columns and biases of the other
    assert details["parameters_before"] - details["parameters_after"] == removed
    assert json.loads((pruned.artifact.path / "config.json").read_text())["intermediate_size"] == width // 2
    with safe_open(str(pruned.artifact.path / "model.safetensors"), "pt") as weights:
        shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
    assert shapes["encoder.layer.0.intermediate.dense.weight"] == (width // 2, hidden)
    assert shapes["encoder.layer.1.output.dense.weight"] == (hidden, width // 2)


def test_prune_refit_is_no_worse_than_cutting_alone_and_fidelity_is_recorded(tiny_source, pruned, tmp_path) -> None:
    context = _context(tiny_source, tmp_path)
    cut = _run("prune", Artifact(tiny_source.path, "hf"), context, ffn_keep=0.5, samples=64, refit=False)
    # the first layer sees the same inputs either way, and least squares is optimal on them
    assert pruned.details["layer_relative_error"][0] <= cut.details["layer_relative_error"][0] + 1e-9
    fidelity = context.evaluate(pruned.artifact)
    assert fidelity.max_abs_error and fidelity.max_abs_error > 0 and fidelity.samples == len(context.validation)


def test_distillation_trains_a_pruned_model_against_the_source_and_keeps_its_best_epoch(
    tiny_source, pruned, tmp_path
) -> None:
    context = _context(tiny_source, tmp_path)
    out = _run("distill", pruned.artifact, context, student_from_input=True, epochs=3, augment=1, learning_rate=1e-3)
    history = out.details["history"]
    assert out.details["student"] == "the pass's input" and out.details["train_samples"] == 2 * len(context.train)
    assert len(history) >= 2 and out.details["best_validation_loss"] <= history[0]["validation_loss"]
    assert json.loads((out.artifact.path / "config.json").read_text())["intermediate_size"] == 32


def test_augmentation_is_reproducible_and_adds_copies() -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "a b", "one two three four five"]
    once, again = augmented(texts, 2, seed=3), augmented(texts, 2, seed=3)
    assert once == again and len(once) == 9 and once[:3] == texts
    assert all(variant.strip() for variant in once) and once != augmented(texts, 2, seed=4)


def test_a_distill_step_with_two_ways_to_make_the_student_is_refused_at_load(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "candidates:\n  - name: s\n    steps:\n      - pass: distill\n"
        "        config: {layers: 1, student_from_input: true}\n"
    )
    with pytest.raises(RecipeError, match=r"candidates\.0\.steps\.0 \(distill\)\.config.*layers and student_from"):
        load_plan(recipe)


def test_low_rank_factorizes_then_exports_and_picks_the_smallest_rank_within_budget(tiny_source, tmp_path) -> None:
    import onnx

    from modelpkg.manifest import FidelityBudget

    context = _context(tiny_source, tmp_path, FidelityBudget(min_cosine_mean=0.5, min_cosine_min=0.0))
    out = _run("low_rank", Artifact(tiny_source.path, "hf"), context, rank_ratios=(0.5, 0.25))
    assert out.artifact.format == "onnx" and out.details["chosen"]["ratio"] == 0.25  # the smallest share first
    assert out.details["chosen"]["macs_remaining"] < 1.0  # 8 of 32 dimensions: less work than the 32x64 matrix
    graph = onnx.load(str(out.artifact.path)).graph
    weights = {tuple(t.dims) for t in graph.initializer}
    assert (8, 64) in weights or (64, 8) in weights  # the FFN output matrix now passes through rank 8


def test_low_rank_fails_naming_the_closest_when_no_rank_fits(tiny_source, tmp_path) -> None:
    from modelpkg.manifest import FidelityBudget
    from optimizers.passes.base import PassFailedError

    context = _context(tiny_source, tmp_path, FidelityBudget(max_abs_error=1e-9))
    with pytest.raises(PassFailedError, match=r"closest: 0\.5 of full rank") as failure:
        _run("low_rank", Artifact(tiny_source.path, "hf"), context, rank_ratios=(0.25, 0.5))
    assert [t["ratio"] for t in failure.value.details["tries"]] == [0.25, 0.5]


def test_fake_quantized_weights_take_at_most_255_levels_per_channel_and_activations_256() -> None:
    import torch

    from optimizers.passes.qat import fake_quantize_activation, fake_quantize_weight

    torch.manual_seed(0)
    weight = torch.randn(4, 300)
    quantized = fake_quantize_weight(weight)
    assert all(len(torch.unique(row)) <= 255 for row in quantized)
    assert torch.allclose(quantized, weight, atol=float(weight.abs().max()) / 127)  # within one step
    activation = torch.randn(8, 300) * 3 + 1
    assert len(torch.unique(fake_quantize_activation(activation))) <= 256


def test_qat_distillation_trains_through_fake_quantization_and_saves_plain_weights(tiny_source, tmp_path) -> None:
    from safetensors import safe_open

    from modelpkg.runtimes.torch import load_model

    context = _context(tiny_source, tmp_path)
    out = _run("distill", Artifact(tiny_source.path, "hf"), context, layers=1, epochs=2, qat=True)
    assert out.details["qat"]["linear_layers"] == 6  # query, key, value, attention output, FFN in and out
    with safe_open(str(out.artifact.path / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "parametrizations" in k]
    load_model(out.artifact.path, "embedding", tiny_source.pooling)  # loads as a plain model


def test_bf16_distillation_trains_under_autocast_and_saves_fp32_weights(tiny_source, tmp_path) -> None:
    from safetensors import safe_open

    context = _context(tiny_source, tmp_path)
    out = _run("distill", Artifact(tiny_source.path, "hf"), context, layers=1, epochs=2, compute="bf16")
    history = out.details["history"]
    assert out.details["best_validation_loss"] < history[0]["validation_loss"]  # it learned, in bf16 arithmetic
    with safe_open(str(out.artifact.path / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}


def test_distillation_keeps_the_layers_named_and_learns_their_hidden_states(tiny_source, tmp_path) -> None:
    from modelpkg.runtimes.torch import load_model
    from optimizers.passes.distill import layer_outputs

    context = _context(tiny_source, tmp_path)
    out = _run("distill", Artifact(tiny_source.path, "hf"), context, keep_layers=(1,), hidden_weight=1.0, epochs=2)
    assert out.details["kept_layers"] == [1] and len(out.details["history"]) >= 2
    student = load_model(out.artifact.path, "embedding", tiny_source.pooling)
    with layer_outputs(student, [0]) as hidden:
        student(*_tensors(tiny_source))
    assert len(hidden) == 1 and hidden[0].shape[-1] == TINY_CONFIG["hidden_size"]


def _tensors(source):
    from optimizers.passes.base import torch_inputs

    return torch_inputs(source, ["a short text", "another, longer piece of text"])


def test_hidden_state_loss_without_a_layer_map_is_refused_at_load(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "candidates:\n  - name: s\n    steps:\n      - pass: distill\n"
        "        config: {student: some/dir, hidden_weight: 1.0}\n"
    )
    with pytest.raises(RecipeError, match="hidden_weight needs a layer-dropped student"):
        load_plan(recipe)
