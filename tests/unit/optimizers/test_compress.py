"""Compression passes on the tiny BERT: structured FFN pruning with a least-squares re-fit (physically smaller),
and distillation that recovers a pruned model against the source, with augmented training text."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from optimizers.passes.base import Artifact
from optimizers.passes.distill import augmented
from optimizers.recipe import RecipeError, load_plan
from optimizers.source import SourceModel
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


def test_fake_quantized_weights_and_activations_take_at_most_255_levels_per_row() -> None:
    import torch

    from optimizers.passes.qat import fake_quantize_activation, fake_quantize_weight

    torch.manual_seed(0)
    weight = torch.randn(4, 300)
    quantized = fake_quantize_weight(weight)
    assert all(len(torch.unique(row)) <= 255 for row in quantized)
    assert torch.allclose(quantized, weight, atol=float(weight.abs().max()) / 127)  # within one step
    activation = torch.randn(2, 8, 300) * 3 + 1  # batch, tokens, features: a scale per token
    quantized = fake_quantize_activation(activation)
    assert quantized.shape == activation.shape
    for row, original in zip(quantized.reshape(16, 300), activation.reshape(16, 300), strict=True):
        assert len(torch.unique(row)) <= 255
        assert torch.allclose(row, original, atol=float(original.abs().max()) / 127)


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
    with pytest.raises(RecipeError, match=r"hidden_weight needs a layer-dropped .* or pruned .* student"):
        load_plan(recipe)


@pytest.fixture(scope="module")
def head_pruned(tiny_source, tmp_path_factory):
    context = _context(tiny_source, tmp_path_factory.mktemp("heads"))
    return context, _run("prune", Artifact(tiny_source.path, "hf"), context, heads_keep=0.5, ffn_keep=0.5, samples=64)


def test_prune_removes_attention_heads_physically_and_the_model_loads_again(tiny_source, head_pruned, tmp_path) -> None:
    import numpy as np

    from modelpkg.runtimes.heads import HEADS_PER_LAYER
    from modelpkg.runtimes.torch import load_model
    from optimizers.passes.graph_optimize import _heads_and_width
    from tests.unit.optimizers.test_passes import _outputs

    context, out = head_pruned
    heads, hidden, layers = (TINY_CONFIG[k] for k in ("num_attention_heads", "hidden_size", "num_hidden_layers"))
    kept, size = heads // 2, hidden // heads
    assert (out.details["heads_kept"], out.details["heads_before"]) == (kept, heads)
    config = json.loads((out.artifact.path / "config.json").read_text())
    assert config[HEADS_PER_LAYER] == [kept] * layers and config["num_attention_heads"] == heads
    with safe_open(str(out.artifact.path / "model.safetensors"), "pt") as weights:
        shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
    for name in ("query", "key", "value"):
        assert shapes[f"encoder.layer.1.attention.self.{name}.weight"] == (kept * size, hidden)
    assert shapes["encoder.layer.0.attention.output.dense.weight"] == (hidden, kept * size)
    # stock transformers builds it again (load_model), and the ONNX export of the smaller attention computes the same
    model = load_model(out.artifact.path, "embedding", tiny_source.pooling)
    assert model.encoder.encoder.layer[0].attention.self.key.out_features == kept * size
    torch_out = _outputs(tiny_source, out.artifact)
    assert context.evaluate(out.artifact).cosine_mean < 1.0  # something was removed
    # the export records the heads kept, which is the count ORT's attention fusion is given (the source's config
    # states the unpruned one: heads of the wrong size). ORT fuses no Attention in transformers 5's SDPA export
    # here, so the count is checked where it is read, and the fused graph still computes the same.
    run = _context(tiny_source, tmp_path)
    exported = _run("export_onnx", out.artifact, run)
    np.testing.assert_allclose(_outputs(tiny_source, exported.artifact), torch_out, atol=1e-4)
    assert _heads_and_width(run, exported.artifact.path) == (kept, kept * size)
    fused = _run("graph_optimize", exported.artifact, run)
    np.testing.assert_allclose(_outputs(tiny_source, fused.artifact), torch_out, atol=1e-3)


def test_head_refit_is_no_worse_than_cutting_alone(tiny_source, head_pruned, tmp_path) -> None:
    _, refit = head_pruned
    context = _context(tiny_source, tmp_path)  # its own output directory: the fixture's model stays as it is
    cut = _run("prune", Artifact(tiny_source.path, "hf"), context, heads_keep=0.5, samples=64, refit=False)
    # the first layer's attention sees the same inputs either way, and least squares is optimal on them
    assert refit.details["attention_relative_error"][0] <= cut.details["attention_relative_error"][0] + 1e-9


def test_the_head_that_adds_nothing_is_the_one_removed(tiny_source, tmp_path) -> None:
    """Layer 0's head 2 is silenced (its columns of the output projection zeroed): keeping 3 of 4 heads must drop
    exactly that one, whose query rows are then gone."""
    import torch
    from transformers import AutoModel

    from optimizers.passes.prune import head_scores

    size = TINY_CONFIG["hidden_size"] // TINY_CONFIG["num_attention_heads"]
    contexts, weight = torch.randn(50, 3 * size, dtype=torch.float64), torch.randn(8, 3 * size)
    weight[:, size : 2 * size] = 0
    assert head_scores(contexts, weight, size).argmin() == 1

    silenced = tmp_path / "silenced"
    shutil.copytree(tiny_source.path, silenced)  # tokenizer and pooling as they are; the weights replaced below
    model = AutoModel.from_pretrained(tiny_source.path)
    with torch.no_grad():
        model.encoder.layer[0].attention.output.dense.weight[:, 2 * size : 3 * size] = 0
    model.save_pretrained(silenced)
    source = SourceModel.from_dir(silenced)
    out = _run("prune", Artifact(silenced, "hf"), _context(source, tmp_path / "run"), heads_keep=0.75, samples=32)
    with safe_open(str(out.artifact.path / "model.safetensors"), "pt") as weights:
        query = weights.get_tensor("encoder.layer.0.attention.self.query.weight")
    rows = model.encoder.layer[0].attention.self.query.weight.detach()
    kept_rows = torch.cat([rows[h * size : (h + 1) * size] for h in (0, 1, 3)])
    torch.testing.assert_close(query, kept_rows)


def test_a_head_pruned_classifier_loads_and_is_judged(tiny_classifier_source, tmp_path) -> None:
    from modelpkg.runtimes.torch import load_model

    context = _context(tiny_classifier_source, tmp_path)
    out = _run("prune", Artifact(tiny_classifier_source.path, "hf"), context, heads_keep=0.5, samples=32)
    model = load_model(out.artifact.path, "classification", tiny_classifier_source.pooling)
    assert model.classifier.base_model.encoder.layer[0].attention.self.query.out_features < TINY_CONFIG["hidden_size"]
    assert context.evaluate(out.artifact).samples == len(context.validation)
    # a layer-dropped student of the pruned classifier keeps the kept layers' head counts and loads
    from optimizers.passes.distill import layer_dropped_student

    layer_dropped_student(out.artifact.path, "classification", (1,), tmp_path / "student")
    student = load_model(tmp_path / "student", "classification", tiny_classifier_source.pooling)
    assert len(student.classifier.base_model.encoder.layer) == 1
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["optiserve_heads_per_layer"] == [TINY_CONFIG["num_attention_heads"] // 2]


def test_distillation_recovers_a_head_pruned_model_with_hidden_states_layer_by_layer(
    tiny_source, head_pruned, tmp_path
) -> None:
    from modelpkg.runtimes.torch import load_model
    from optimizers.passes.distill import DistillConfig, Distiller

    _, pruned = head_pruned
    context = _context(tiny_source, tmp_path)
    out = _run(
        "distill", pruned.artifact, context, student_from_input=True, hidden_weight=1.0, epochs=3, learning_rate=1e-3
    )
    layers = TINY_CONFIG["num_hidden_layers"]
    assert out.details["hidden_state_layers"] == [[i, i] for i in range(layers)]
    history = out.details["history"]
    assert len(history) >= 2 and all(epoch["validation_loss"] > 0 for epoch in history)
    config = json.loads((out.artifact.path / "config.json").read_text())
    assert config["optiserve_heads_per_layer"] == [TINY_CONFIG["num_attention_heads"] // 2] * layers
    # the hidden-state term is in the step's loss: the same batch and weights cost more with it than without
    student = load_model(pruned.artifact.path, "embedding", tiny_source.pooling)
    teacher = load_model(tiny_source.path, "embedding", tiny_source.pooling)
    texts = context.train[:8]

    def step(weight: float) -> float:
        config = DistillConfig(student_from_input=True, hidden_weight=weight)
        distiller = Distiller(teacher, student, tiny_source, "embedding", config, tuple((i, i) for i in range(layers)))
        return float(distiller.step_loss(texts, distiller.teacher_outputs(texts)))

    assert step(1.0) > step(0.0) > 0


def test_hidden_state_loss_on_a_student_of_another_depth_is_refused(tiny_source, tmp_path) -> None:
    from optimizers.passes.distill import layer_dropped_student

    shallow = tmp_path / "shallow"
    layer_dropped_student(tiny_source.path, "embedding", 1, shallow)
    context = _context(tiny_source, tmp_path / "run")
    with pytest.raises(ValueError, match="different depth"):
        _run("distill", Artifact(shallow, "hf"), context, student_from_input=True, hidden_weight=1.0, epochs=1)
