"""The pass framework on tiny seeded models: every pass, the recipe validator, the content-addressed cache
(reuse and tamper detection), accuracy-aware quantization, budget enforcement, and clean GPU skips on CPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus import load_split
from modelpkg.manifest import Fidelity, FidelityBudget, ProfileRow
from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline
from optimizers.cache import StepCache
from optimizers.candidate import Candidate
from optimizers.chain import optimize
from optimizers.evaluate import OutputsEvaluator
from optimizers.passes.base import REGISTRY, Artifact, PassConfig, PassContext, PassFailedError, get_pass
from optimizers.passes.distill import kept_layers
from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx
from optimizers.profile import serving_defaults
from optimizers.recipe import Recipe, RecipeError, load_plan, plan
from optimizers.selection import BudgetNotMetError, mark_pareto
from optimizers.source import SourceModel

VALIDATION = load_split("validation")[:48]
TEXTS = load_split("heldout")[:24]


def _context(source: SourceModel, out_dir: Path, budget: FidelityBudget | None = None) -> PassContext:
    return PassContext(
        source=source,
        out_dir=out_dir,
        train=load_split("train")[:96],
        calibration=load_split("calibration")[:32],
        validation=VALIDATION,
        budget=budget or FidelityBudget(),
        evaluate=OutputsEvaluator(source, 1, VALIDATION),
    )


def _run(name: str, artifact: Artifact, context: PassContext, **config: object):
    spec = get_pass(name)
    return spec.run(artifact, spec.config_type(**config), context)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_source: SourceModel, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    path = export_onnx(tiny_source, tmp_path_factory.mktemp("onnx") / "fp32.onnx", TEXTS, ExportOnnxConfig())
    return Artifact(path, "onnx", "fp32")


def _outputs(source: SourceModel, artifact: Artifact) -> np.ndarray:
    return OutputsEvaluator(source, 1, TEXTS).outputs(artifact, TEXTS)


def test_registry_has_every_pass_with_a_strict_config() -> None:
    get_pass("export_onnx")
    expected = {
        "export_onnx",
        "graph_optimize",
        "quantize_dynamic",
        "quantize_static",
        "fp16",
        "torch_precision",
        "distill",
        "tensorrt",
        "torch_compile",
        "cuda_graphs",
    }
    assert expected <= set(REGISTRY)
    for spec in REGISTRY.values():
        assert issubclass(spec.config_type, PassConfig) and spec.config_type.model_config["extra"] == "forbid"
        assert spec.doc, f"pass {spec.name} has no docstring"


def test_graph_optimize_fuses_and_keeps_outputs(tiny_source, tiny_onnx, tmp_path) -> None:
    # the export traces eager attention: no SDPA guards over the scores, and ONNX Runtime fuses each layer's attention
    assert "IsNaN" not in {n.op_type for n in onnx.load(str(tiny_onnx.path)).graph.node}
    out = _run("graph_optimize", tiny_onnx, _context(tiny_source, tmp_path))
    assert out.details["fused_operators"].get("SkipLayerNormalization", 0) >= 2
    assert out.details["fused_operators"].get("Attention", 0) == 2  # the tiny BERT's two layers
    ops = {n.op_type for n in onnx.load(str(out.artifact.path)).graph.node}
    assert "SkipLayerNormalization" in ops
    assert np.abs(_outputs(tiny_source, out.artifact) - _outputs(tiny_source, tiny_onnx)).max() < 1e-4


def test_quantize_static_writes_calibrated_qdq(tiny_source, tiny_onnx, tmp_path) -> None:
    out = _run("quantize_static", tiny_onnx, _context(tiny_source, tmp_path), calibration_samples=32)
    ops = [n.op_type for n in onnx.load(str(out.artifact.path)).graph.node]
    assert ops.count("QuantizeLinear") >= 12 and ops.count("DequantizeLinear") >= 24
    assert out.artifact.precision == "int8" and out.details["tries"][0]["within_budget"]
    assert np.isfinite(_outputs(tiny_source, out.artifact)).all()


def test_quantization_search_widens_exclusions_then_fails_naming_the_closest(tiny_source, tiny_onnx, tmp_path) -> None:
    """A budget the fp32 input meets on any CPU (its error is ~100x below it) but no int8 model with most of its
    MatMuls quantized can: per-tensor, then per-channel, then the 1, 2, 3 most sensitive nodes kept fp32."""
    fp32_only = FidelityBudget(max_abs_error=1e-5)  # fp32 export: ~1e-7; int8 here: ~1e-4
    with pytest.raises(
        PassFailedError, match=r"closest: per_channel=\w+ with \d+ nodes in fp32 \(max_abs_e"
    ) as failure:
        _run("quantize_dynamic", tiny_onnx, _context(tiny_source, tmp_path, fp32_only), per_channel=False)
    details = failure.value.details
    tries = [(t["per_channel"], len(t["excluded"])) for t in details["tries"]]
    assert tries == [(False, 0), (True, 0), (True, 1), (True, 2), (True, 3)]  # 12 nodes, at most 25% excluded
    assert details["nodes_probed"] == 12
    ranked = list(details["sensitivity_top10"])
    assert details["tries"][-1]["excluded"] == ranked[:3]  # the most sensitive first
    assert ranked == sorted(ranked, key=lambda n: -details["sensitivity_top10"][n])


def test_quantization_of_an_input_already_outside_the_budget_fails_without_searching(
    tiny_source, tiny_onnx, tmp_path
) -> None:
    budget = FidelityBudget(max_abs_error=1e-12)  # even the fp32 export differs from torch by more
    with pytest.raises(PassFailedError, match="its input is already outside the fidelity budget") as failure:
        _run("quantize_dynamic", tiny_onnx, _context(tiny_source, tmp_path, budget))
    assert len(failure.value.details["tries"]) == 1 and "sensitivity_top10" not in failure.value.details


def test_quantization_without_accuracy_awareness_leaves_the_verdict_to_selection(tiny_source, tiny_onnx, tmp_path):
    unreachable = FidelityBudget(max_abs_error=1e-12)  # no int8 model comes this close to its fp32 source
    out = _run("quantize_dynamic", tiny_onnx, _context(tiny_source, tmp_path, unreachable), accuracy_aware=False)
    assert out.artifact.precision == "int8" and len(out.details["tries"]) == 1


def test_quantization_within_budget_stops_at_the_first_try(tiny_source, tiny_onnx, tmp_path) -> None:
    out = _run("quantize_dynamic", tiny_onnx, _context(tiny_source, tmp_path), per_channel=True)
    assert len(out.details["tries"]) == 1 and out.details["chosen"] == {"per_channel": True, "excluded": []}


def test_fp16_keeps_fp32_inputs_and_outputs(tiny_source, tiny_onnx, tmp_path) -> None:
    out = _run("fp16", tiny_onnx, _context(tiny_source, tmp_path))
    model = onnx.load(str(out.artifact.path))
    assert {t.data_type for t in model.graph.initializer if t.dims and len(t.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fid = OutputsEvaluator(tiny_source, 1, TEXTS)(out.artifact)
    assert fid.cosine_min > 0.999


def test_torch_bfloat16_weights_run_in_the_torch_runtime(tiny_source, tmp_path) -> None:
    out = _run("torch_precision", Artifact(tiny_source.path, "hf"), _context(tiny_source, tmp_path), dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(str(out.artifact.path / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.bfloat16"}
    fid = OutputsEvaluator(tiny_source, 1, TEXTS)(out.artifact)
    assert out.artifact.precision == "bf16" and fid.cosine_mean > 0.99


def test_kept_layers_are_evenly_spaced() -> None:
    assert kept_layers(6, 3) == [0, 2, 5] and kept_layers(12, 4) == [0, 4, 7, 11] and kept_layers(2, 1) == [1]
    with pytest.raises(ValueError):
        kept_layers(2, 3)


@pytest.fixture(scope="module")
def peaked_classifier(tmp_path_factory: pytest.TempPathFactory) -> SourceModel:
    """A tiny classifier whose logits are far from uniform (large initial weights), so a student has to learn."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from optimizers.source import bundled_model_dir
    from tests.conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("peaked")
    torch.manual_seed(3)
    config = BertConfig(
        **{**TINY_CONFIG, "architectures": ["BertForSequenceClassification"]}, num_labels=3, initializer_range=0.5
    )
    BertForSequenceClassification(config).eval().save_pretrained(root, safe_serialization=True)
    shutil.copy2(bundled_model_dir() / "tokenizer.json", root / "tokenizer.json")
    return SourceModel.from_dir(root)


@pytest.mark.parametrize("fixture", ["tiny_source", "peaked_classifier"])
def test_distill_trains_a_shallower_student_with_early_stopping(fixture, request, tmp_path) -> None:
    source: SourceModel = request.getfixturevalue(fixture)
    context = _context(source, tmp_path)
    out = _run("distill", Artifact(source.path, "hf"), context, layers=1, epochs=3, patience=1, batch_size=16)
    config = json.loads((out.artifact.path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and out.details["kept_layers"] == [1]
    history = out.details["history"]
    assert 2 <= len(history) <= 4 and out.details["best_validation_loss"] == min(h["validation_loss"] for h in history)
    assert out.details["best_validation_loss"] < history[0]["validation_loss"]  # training helped
    outputs = OutputsEvaluator(source, 1, TEXTS).outputs(out.artifact, TEXTS)
    assert outputs.shape == (len(TEXTS), source.output_dim) and np.isfinite(outputs).all()


def test_gpu_passes_skip_with_the_reason_on_cpu(tiny_source, tiny_onnx, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the passes run instead of skipping")
    from optimizers.passes.base import PassUnavailableError

    for name, artifact in (
        ("tensorrt", tiny_onnx),
        ("torch_compile", Artifact(tiny_source.path, "hf")),
        ("cuda_graphs", Artifact(tiny_source.path, "hf")),
    ):
        with pytest.raises(PassUnavailableError, match="CUDA is not available"):
            _run(name, artifact, _context(tiny_source, tmp_path))


BAD_RECIPES = [
    ("candidates: []", "candidates = []"),
    ("candidates: [{name: a, steps: [{pass: export_onx}]}]", "'export_onx': unknown pass"),
    (
        "candidates: [{name: a, steps: [{pass: export_onnx}, {pass: distill}]}]",
        "steps.1.pass = 'distill': takes a hf/module model, but the step before it yields onnx",
    ),
    (
        "candidates: [{name: a, steps: [{pass: export_onnx, config: {opset: 9}}]}]",
        "candidates.0.steps.0 (export_onnx).config.opset = 9",
    ),
    (
        "candidates: [{name: a, steps: [{pass: export_onnx}, {pass: quantize_dynamic, search: {per_chanel: [true]}}]}]",
        "per_chanel = True: Extra inputs are not permitted",
    ),
    (
        "budget: {min_cosine_mean: 2}\ncandidates: [{name: a, steps: [{pass: export_onnx}]}]",
        "budget.min_cosine_mean = 2",
    ),
    ("candidates: [{name: a, steps: [{pass: export_onnx}], extra: 1}]", "candidates.0.extra = 1"),
    ("candidates: [{name: a, steps: [{pass: export_onnx}]}, {name: a, steps: [{pass: export_onnx}]}]", "unique"),
    ("candidates: [", "not valid YAML"),
    ("heldout_items: 5\ncandidates: [{name: a, steps: [{pass: export_onnx}]}]", "heldout_items = 5"),
    ("selection: {rank_by: fastest}\ncandidates: [{name: a, steps: [{pass: export_onnx}]}]", "selection.rank_by"),
]


@pytest.mark.parametrize(("text", "message"), BAD_RECIPES)
def test_recipe_errors_name_the_key_and_value(text, message, tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load_plan(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_optimize_refuses_a_bad_recipe_before_it_loads_the_model(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("candidates: [{name: a, steps: [{pass: quantize_dynamic, config: {per_channel: maybe}}]}]")
    with pytest.raises(RecipeError, match="per_channel"):
        optimize(tmp_path / "no-such-model", tmp_path / "pkg", recipe=recipe)
    assert not (tmp_path / "pkg").exists()


def test_builtin_recipes_load_and_expand_search() -> None:
    cpu = {c.name: c.requires for c in load_plan("cpu").candidates}
    assert cpu == {
        "onnx-fp32": (),
        "int8-dynamic": (),
        "openvino-f32": (),
        "openvino-bf16": ("bf16",),
        "openvino-int8": ("vnni",),
        "openvino-int8-bf16": ("vnni", "bf16"),
        "torch-bf16": ("bf16",),
    }
    names = [c.name for c in load_plan("cpu-full").candidates]
    assert names == [
        "onnx-fp32",
        "onnx-fused",
        "int8-dynamic-no-per-channel",
        "int8-dynamic-per-channel",
        "int8-static",
        "openvino-f32",
        "openvino-bf16",
        "openvino-int8-f32",
        "openvino-int8-bf16",
        "torch-bf16",
    ]
    distill = [c.name for c in load_plan("cpu-distill").candidates]
    assert distill[-2:] == ["student-int8-layers3", "student-int8-layers4"]
    assert [c.name for c in load_plan("gpu").candidates] == [
        "torch-float16",
        "torch-bfloat16",
        "torch-fp16-graphs",
        "torch-fp16-compile",
        "onnx-fp16",
        "tensorrt-fp16",
    ]
    with pytest.raises(RecipeError, match="not a built-in recipe"):
        load_plan("no-such-recipe")


def test_selection_ranks_by_what_the_recipe_says_and_can_cap_single_input_latency(tmp_path) -> None:
    from optimizers.recipe import SelectionSpec
    from optimizers.selection import budget_not_met, select

    def cand(name: str, items_per_s: float, alone_ms: float) -> Candidate:
        row = ProfileRow(batch_size=32, call_items=8, items_per_s=items_per_s, p50_ms=1, p99_ms=1)
        c = Candidate(name, Artifact(Path(name), "onnx"), [], single_p50_ms=alone_ms)
        c.profile, c.fidelity = [row], Fidelity(cosine_mean=1.0, cosine_p1=1.0, cosine_min=1.0, samples=1)
        return c

    # batch-friendly int8 vs a model quicker alone (its batches gain less)
    candidates = [cand("batches-well", 900, 6.0), cand("quick-alone", 600, 3.0), cand("neither", 500, 7.0)]
    budget = FidelityBudget()
    assert select(candidates, budget).name == "batches-well"  # type: ignore[union-attr]
    assert select(candidates, budget, SelectionSpec(rank_by="latency")).name == "quick-alone"  # type: ignore[union-attr]
    capped = SelectionSpec(max_single_p50_ms=5.0)
    assert select(candidates, budget, capped).name == "quick-alone"  # type: ignore[union-attr]
    too_strict = SelectionSpec(max_single_p50_ms=1.0)
    assert select(candidates, budget, too_strict) is None
    error = budget_not_met(candidates, budget, tmp_path, too_strict)
    assert "max_single_p50_ms 1 ms; quickest: quick-alone (3.0 ms)" in str(error)
    # as served, on all the cores: the one that batches well on one thread scales worse over replicas
    layouts = {"batches-well": (950, 700), "quick-alone": (800, 1300), "neither": (600, 900)}
    for c in candidates:
        threads, replicas = layouts[c.name]
        c.layout = {"cores": 2, "chosen": "replicas", "threads_items_per_s": threads, "replicas_items_per_s": replicas}
    assert select(candidates, budget).name == "quick-alone"  # type: ignore[union-attr]


def test_pareto_front_and_serving_config_from_the_profile() -> None:
    def cand(name: str, speed: float, cos: float) -> Candidate:
        row = ProfileRow(batch_size=1, call_items=1, items_per_s=speed, p50_ms=1, p99_ms=1)
        c = Candidate(name, Artifact(Path(name), "onnx"), [])
        c.profile, c.fidelity = [row], Fidelity(cosine_mean=cos, cosine_p1=cos, cosine_min=cos, samples=1)
        return c

    candidates = [
        cand("slow-exact", 1, 1.0),
        cand("fast", 5, 0.99),
        cand("dominated", 4, 0.98),
        cand("fastest", 6, 0.9),
    ]
    mark_pareto(candidates)
    assert [c.name for c in candidates if c.pareto] == ["slow-exact", "fast", "fastest"]
    profile = [
        ProfileRow(batch_size=32, call_items=b, items_per_s=s, p50_ms=p, p99_ms=p * 2)
        for b, s, p in ((1, 100, 40.0), (2, 150, 30.0), (4, 180, 24.0), (8, 170, 26.0))
    ]
    config = serving_defaults(profile, token_p99=40)
    assert (config.max_call_items, config.max_batch_tokens, config.batch_wait_timeout_s) == (4, 160, 0.003)
    assert config.max_batch_size == 32 and (config.max_queued_s, config.max_queued_items) == (2.0, 4096)


def _tiny_recipe(budget: dict | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "tiny",
            "budget": budget or {},
            "profile": {"items": 32, "max_batch": 4, "min_batches": 2},
            "candidates": [
                {"name": "onnx-fp32", "steps": [{"pass": "export_onnx"}]},
                {"name": "int8", "steps": [{"pass": "export_onnx"}, {"pass": "quantize_dynamic"}]},
                {"name": "trt", "steps": [{"pass": "export_onnx"}, {"pass": "tensorrt"}]},
            ],
        }
    )


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
def test_rerun_reuses_every_step_and_a_tampered_entry_is_recomputed(tiny_model_dir, tmp_path, caplog) -> None:
    cache = tmp_path / "cache"
    first = optimize(tiny_model_dir, tmp_path / "a", recipe=_tiny_recipe(), cache_dir=cache)
    records = [r for c in first.candidates for r in c.chain]
    assert [r.cached for r in records] == [False, True, False, True]  # export shared by the second candidate
    skipped = next(c for c in first.candidates if c.name == "trt")
    assert skipped.status == "skipped" and "CUDA" in skipped.reason
    assert "skipped" in (tmp_path / "a" / "report.md").read_text()

    second = optimize(tiny_model_dir, tmp_path / "b", recipe=_tiny_recipe(), cache_dir=cache)
    assert all(r.cached for c in second.candidates for r in c.chain)

    quantized = next(c for c in second.candidates if c.name == "int8").model_path
    quantized.write_bytes(quantized.read_bytes() + b"tampered")
    with caplog.at_level(logging.WARNING, logger="optimizers.cache"):
        third = optimize(tiny_model_dir, tmp_path / "c", recipe=_tiny_recipe(), cache_dir=cache)
    assert "modified after it was written" in caplog.text
    int8 = next(c for c in third.candidates if c.name == "int8")
    assert [r.cached for r in int8.chain] == [True, False]
    assert onnx.load(str(int8.model_path)) is not None and load_package(tmp_path / "c").manifest.precision in {
        "int8",
        "fp32",
    }
    assert len(list(StepCache(cache).root.glob("??/*"))) == 2


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
def test_a_step_run_on_other_data_is_not_taken_from_the_cache(tiny_model_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    optimize(tiny_model_dir, tmp_path / "a", recipe=_tiny_recipe(), cache_dir=cache)
    texts = tmp_path / "mine.txt"
    texts.write_text("\n".join(f"Request {i} asks the server about batching, caching and latency." for i in range(150)))
    mine = optimize(tiny_model_dir, tmp_path / "b", recipe=_tiny_recipe(), cache_dir=cache, data_file=texts)
    # as on an empty cache: only the export shared within this run is reused, nothing made from the corpus
    assert [r.cached for c in mine.candidates for r in c.chain] == [False, True, False, True]


def test_impossible_budget_fails_naming_the_closest_and_writes_the_report(tiny_model_dir, tmp_path) -> None:
    budget = {"min_cosine_mean": 1.0, "min_cosine_min": 1.0, "max_abs_error": 1e-9}
    with pytest.raises(BudgetNotMetError, match=r"closest: \S+ \(") as error:
        optimize(tiny_model_dir, tmp_path / "pkg", recipe=_tiny_recipe(budget), cache_dir=tmp_path / "cache")
    report_dir = tmp_path / "pkg.report"
    assert str(report_dir) in str(error.value) and not (tmp_path / "pkg").exists()
    report = json.loads((report_dir / "report.json").read_text())
    assert report["selected"] is None and all(not c["within_budget"] for c in report["candidates"])
    failed = next(c for c in report["candidates"] if c["name"] == "int8")
    assert failed["status"] == "failed" and "outside the fidelity budget" in failed["reason"]
    assert failed["chain"][-1]["duration_s"] > 0  # what the failed pass cost counts where the time went
    from PIL import Image

    with Image.open(report_dir / "fidelity_vs_throughput.png") as image:
        assert image.size[0] > 400


def test_a_users_onnx_file_is_optimized_without_export(tiny_source, tiny_onnx, tmp_path) -> None:
    import shutil

    user = tmp_path / "user-model"
    user.mkdir()
    shutil.copy2(tiny_onnx.path, user / "encoder.onnx")
    shutil.copy2(tiny_source.path / "tokenizer.json", user / "tokenizer.json")
    recipe = Recipe.model_validate(
        {
            "profile": {"items": 32, "max_batch": 4, "min_batches": 2},
            "candidates": [{"name": "int8", "steps": [{"pass": "quantize_dynamic"}]}],
        }
    )
    with pytest.raises(RecipeError, match="takes a hf/module model, but the source model is onnx"):
        export = Recipe.model_validate({"candidates": [{"name": "x", "steps": [{"pass": "export_onnx"}]}]})
        plan(export).check_source("onnx")
    result = optimize(
        user / "encoder.onnx",
        tmp_path / "pkg",
        recipe=recipe,
        cache_dir=tmp_path / "cache",
        baseline_out=tmp_path / "baseline",
    )
    assert [c.name for c in result.candidates] == ["onnx-source", "int8"]
    assert result.candidates[0].fidelity.cosine_min > 0.9999  # the ONNX file is its own reference
    package = load_package(tmp_path / "pkg")
    assert package.manifest.runtime == "onnxruntime" and package.manifest.embedding_dim == 32
    out, _ = TextPipeline.from_package(package, threads=1).run(TEXTS)
    assert out.shape == (len(TEXTS), 32)
    assert load_package(tmp_path / "baseline").manifest.version == "onnx-source"


def test_the_chain_measures_the_replica_layout_and_serve_applies_it(classifier_package) -> None:
    import os

    from optiserve.cli import _measured_layout

    measured = classifier_package.report["replica_layout"]
    layout = classifier_package.package.manifest.serving.replica_layout
    if (os.cpu_count() or 1) < 2:
        assert measured is None and layout is None
        return
    assert layout == measured["chosen"] and layout in ("replicas", "threads")
    assert measured["replicas_items_per_s"] > 0 and measured["threads_items_per_s"] > 0
    faster = max(("replicas", "threads"), key=lambda name: measured[f"{name}_items_per_s"])
    assert layout == faster
    threads, replicas = _measured_layout([classifier_package.package.root], cores=4)
    assert (threads, replicas) == ((1, 4) if layout == "replicas" else (4, 1))
    assert _measured_layout([classifier_package.package.root], cores=1) == (None, 1)


def test_the_report_shows_a_try_stopped_at_its_time_budget() -> None:
    """An accuracy-control try stopped by ``accuracy_control_s`` has no fidelity: the report says it stopped."""
    from optimizers.report import _pass_lines

    judged = {"cosine_mean": 0.98, "cosine_p1": 0.95, "cosine_min": 0.9, "samples": 8}
    tries = [
        {"how": "nncf.quantize", "fidelity": judged},
        {"how": "nncf.quantize_with_accuracy_control", "stopped_after_s": 181.4},
    ]
    record = {"name": "nncf_quantize", "duration_s": 200.0, "details": {"tries": tries}}
    (line,) = _pass_lines({"candidates": [{"name": "openvino-int8", "chain": [record]}]})
    assert "nncf.quantize → cos 0.9800/0.9000" in line
    assert "nncf.quantize_with_accuracy_control → stopped at its time budget after 181 s" in line
