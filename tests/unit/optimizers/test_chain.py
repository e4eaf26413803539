"""Optimizer passes on a tiny seeded model, fidelity, chunk planning and parity with sentence-transformers."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus import CALIBRATION_SIZE, HELDOUT_SIZE, VALIDATION_SIZE, load_split
from modelpkg.manifest import BATCH_INVARIANT_COSINE, Fidelity, FidelityBudget
from modelpkg.pipeline import TextPipeline, plan_chunks
from modelpkg.runtimes.onnx import OnnxRuntime
from modelpkg.runtimes.torch import TorchRuntime
from modelpkg.tokenizer import TextEncoder
from optimizers.budget import admits, violations
from optimizers.fidelity import nn_agreement, output_fidelity
from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx
from optimizers.passes.quantize import QuantizeDynamicConfig, quantize_dynamic
from optimizers.selection import speed
from optimizers.source import SourceModel, bundled_model_dir

TEXTS = load_split("heldout")[:24]


def _encoder(source: SourceModel) -> TextEncoder:
    return TextEncoder.from_spec(source.path, source.tokenizer)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_source: SourceModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    return export_onnx(tiny_source, out, TEXTS, ExportOnnxConfig())


def test_corpus_splits_are_disjoint_and_fixed() -> None:
    splits = {s: load_split(s) for s in ("train", "validation", "calibration", "heldout")}  # type: ignore[arg-type]
    train, heldout = splits["train"], splits["heldout"]
    assert len(heldout) == HELDOUT_SIZE and len(splits["calibration"]) == CALIBRATION_SIZE and len(train) > 2000
    assert len(splits["validation"]) == VALIDATION_SIZE
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(splits[a]) & set(splits[b]), (a, b)
    assert load_split("heldout") == heldout
    with pytest.raises(ValueError, match="unknown split"):
        load_split("test")  # type: ignore[arg-type]


def test_the_large_corpus_only_adds_training_text() -> None:
    from optimizers.datasets import load_dataset

    base, large = load_dataset("corpus"), load_dataset("corpus-large")
    assert (large.validation, large.calibration, large.heldout) == (base.validation, base.calibration, base.heldout)
    assert large.train[: len(base.train)] == base.train and len(large.train) == len(base.train) + 40_000
    assert not set(large.train) & set(base.validation + base.calibration + base.heldout)


def test_source_reads_pooling_and_limits_from_sentence_transformers_config() -> None:
    source = SourceModel.from_dir(bundled_model_dir())
    assert source.name == "all-MiniLM-L6-v2"
    assert (source.pooling.mode, source.pooling.normalize) == ("mean", True)
    assert source.tokenizer.max_length == 256 and source.output_dim == 384 and source.task == "embedding"


def test_export_has_dynamic_axes_and_matches_torch(tiny_source: SourceModel, tiny_onnx: Path) -> None:
    graph = onnx.load(str(tiny_onnx)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "token_type_ids")}
    encoder = _encoder(tiny_source)
    torch_out, _ = TextPipeline(encoder, TorchRuntime(tiny_source.path, tiny_source.pooling, 1), 32).run(TEXTS)
    # batch sizes and lengths that differ from the export sample
    onnx_out, _ = TextPipeline(encoder, OnnxRuntime(tiny_onnx, 1), 32).run(TEXTS, max_items=5)
    assert np.abs(onnx_out - torch_out).max() < 1e-4
    assert np.allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("activation_scales", ["row", "tensor"])
def test_quantize_dynamic_writes_int8_matmuls(
    tiny_source: SourceModel, tiny_onnx: Path, tmp_path: Path, activation_scales: str
) -> None:
    for per_channel in (False, True):
        config = QuantizeDynamicConfig(per_channel=per_channel, activation_scales=activation_scales)  # type: ignore[arg-type]
        out = quantize_dynamic(tiny_onnx, tmp_path / f"int8-{per_channel}.onnx", config)
        model = onnx.load(str(out))
        ops = [n.op_type for n in model.graph.node]
        # 2 layers x (q, k, v, out, ffn-in, ffn-out); per row, fused with their weight scales as ONNX Runtime does
        integer_products = "MatMulIntegerToFloat" if activation_scales == "row" else "MatMulInteger"
        assert ops.count(integer_products) == 12
        # ONNX Runtime's per-call quantizer stays only where asked for; per row, each of its 8 inputs gets a scale
        assert ops.count("DynamicQuantizeLinear") == (8 if activation_scales == "tensor" else 0)
        assert ops.count("ReduceMax") == (8 if activation_scales == "row" else 0)
        int8_weights = [
            t
            for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and not t.name.endswith("zero_point")
        ]
        assert len(int8_weights) == 12
        scales = {
            t.name: len(onnx.numpy_helper.to_array(t).ravel()) for t in model.graph.initializer if "scale" in t.name
        }
        assert any(n > 1 for n in scales.values()) == per_channel
        embeddings, _ = TextPipeline(_encoder(tiny_source), OnnxRuntime(out, 1), 32).run(TEXTS)
        assert embeddings.shape == (len(TEXTS), 32) and np.isfinite(embeddings).all()


def test_row_scales_make_dynamic_int8_batch_invariant(
    tiny_source: SourceModel, tiny_onnx: Path, tmp_path: Path
) -> None:
    """Each input alone, then all 24 in length-sorted calls of up to 32 (padding included): per-row scales give the
    same vectors (rounding only), per-call scales do not; both stay close to fp32 (ONNX Runtime's full graph
    optimization, as served: its MatMulIntegerToFloat fusion must not swallow the row scales)."""
    encoder = _encoder(tiny_source)
    reference, _ = TextPipeline(encoder, OnnxRuntime(tiny_onnx, 1), 32).run(TEXTS)
    moved = {}
    for scales in ("row", "tensor"):
        config = QuantizeDynamicConfig(activation_scales=scales)  # type: ignore[arg-type]
        pipeline = TextPipeline(
            encoder, OnnxRuntime(quantize_dynamic(tiny_onnx, tmp_path / f"{scales}.onnx", config), 1), 32
        )
        alone, _ = pipeline.run(TEXTS, max_items=1)
        together, _ = pipeline.run(TEXTS)
        moved[scales] = float(np.abs(alone - together).max())
        assert output_fidelity(reference, together).cosine_mean > 0.98
    assert moved["row"] < 1e-5
    assert moved["tensor"] > 10 * max(moved["row"], 1e-6)


def test_fidelity_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 8)).astype(np.float32)
    same = output_fidelity(ref, ref * 3.0)
    assert same.cosine_min == pytest.approx(1.0, abs=1e-6) and same.samples == 50
    flipped = ref.copy()
    flipped[0] *= -1
    worse = output_fidelity(ref, flipped)
    assert worse.cosine_min == pytest.approx(-1.0, abs=1e-6)
    assert worse.cosine_mean == pytest.approx(48 / 50, abs=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        output_fidelity(ref, ref[:10])
    assert same.max_abs_error == pytest.approx(2 * np.abs(ref).max(), rel=1e-5)
    assert same.max_rel_error == pytest.approx(2.0, rel=1e-5)


def test_task_fidelity_nearest_neighbours_and_labelled_accuracy() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 16)).astype(np.float32)
    assert nn_agreement(ref, ref * 2) == 1.0
    shuffled = rng.permutation(ref)  # unrelated vectors: neighbours agree by chance only (about 10/39)
    assert nn_agreement(ref, shuffled) < 0.5
    emb = output_fidelity(ref, ref + 1e-3, task="embedding")
    assert emb.nn_agreement_at10 == 1.0 and emb.top1_agreement is None
    logits = rng.normal(size=(40, 3)).astype(np.float32)
    truth = logits.argmax(1)
    truth[:4] = (truth[:4] + 1) % 3  # 4 of 40 labels differ from the reference's predictions
    cls = output_fidelity(logits, logits, task="classification", labels=truth)
    assert cls.top1_agreement == 1.0 and cls.labelled_accuracy == pytest.approx(0.9)


def test_budget_admits_only_candidates_within_every_limit() -> None:
    budget = FidelityBudget(min_cosine_mean=0.99, min_cosine_min=0.95)
    assert admits(budget, Fidelity(cosine_mean=0.995, cosine_p1=0.97, cosine_min=0.96, samples=10))
    assert not admits(budget, Fidelity(cosine_mean=0.985, cosine_p1=0.97, cosine_min=0.96, samples=10))
    assert not admits(budget, Fidelity(cosine_mean=0.995, cosine_p1=0.97, cosine_min=0.90, samples=10))
    strict = FidelityBudget(min_nn_agreement_at10=0.9, max_abs_error=0.01)
    near = Fidelity(cosine_mean=1, cosine_p1=1, cosine_min=1, samples=10, nn_agreement_at10=0.85, max_abs_error=0.02)
    assert violations(strict, near) == ["nn_agreement_at10 0.8500 < 0.9", "max_abs_error 0.0200 > 0.01"]


@pytest.mark.parametrize("call_cost", [None, 0.5, 4.0, 1e9])
@pytest.mark.parametrize(("max_items", "max_tokens"), [(1, 10_000), (4, 10_000), (8, 60), (32, 1)])
def test_plan_chunks_covers_every_item_once_within_limits(max_items: int, max_tokens: int, call_cost) -> None:
    lengths = np.random.default_rng(1).integers(3, 40, size=37)
    chunks = plan_chunks(lengths, max_items, max_tokens, call_cost)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(37))
    for rows in chunks:
        assert len(rows) <= max_items
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= max_tokens
        assert list(lengths[rows]) == sorted(lengths[rows])
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_chunks(lengths, 0, 10)


def _cost(lengths: np.ndarray, chunks: list[np.ndarray], call_cost: float) -> float:
    return sum(call_cost + len(rows) * int(lengths[rows].max()) for rows in chunks)


def test_plan_chunks_with_a_call_cost_pads_less_and_is_the_cheapest_cut() -> None:
    """With what a call costs (in tokens), a batch is cut where padding would cost more than another call: the
    cheapest of every cut of the sorted batch within the limits (checked against all of them on small batches);
    a dear call keeps calls full, as without one."""
    lengths = np.array([5, 40, 5, 5])
    assert [rows.tolist() for rows in plan_chunks(lengths, 4, 10_000, 4.0)] == [[0, 2, 3], [1]]
    assert [rows.tolist() for rows in plan_chunks(lengths, 4, 10_000, 1e6)] == [[0, 2, 3, 1]]
    rng = np.random.default_rng(7)
    for _ in range(40):
        lengths = rng.integers(3, 60, size=int(rng.integers(1, 9)))
        max_items, max_tokens, call_cost = (
            int(rng.integers(1, 6)),
            int(rng.integers(40, 200)),
            float(rng.uniform(0, 30)),
        )
        widths = np.sort(lengths)
        best = np.inf
        for mask in range(2 ** (len(widths) - 1)):  # every cut of the sorted batch into consecutive calls
            bounds = [0, *(i + 1 for i in range(len(widths) - 1) if mask >> i & 1), len(widths)]
            calls = [widths[a:b] for a, b in itertools.pairwise(bounds)]
            if all(len(c) <= max_items and (len(c) == 1 or len(c) * c.max() <= max_tokens) for c in calls):
                best = min(best, sum(call_cost + len(c) * int(c.max()) for c in calls))
        chunks = plan_chunks(lengths, max_items, max_tokens, call_cost)
        assert _cost(lengths, chunks, call_cost) == pytest.approx(best)
        filled = plan_chunks(lengths, max_items, max_tokens)
        assert _cost(lengths, chunks, call_cost) <= _cost(lengths, filled, call_cost) + 1e-9


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
def test_pipeline_matches_sentence_transformers_on_bundled_model() -> None:
    """Our tokenizer + encoder + pooling is the model's own sentence-transformers pipeline."""
    from sentence_transformers import SentenceTransformer

    source = SourceModel.from_dir(bundled_model_dir())
    texts = load_split("heldout")[:64]
    ours, stats = TextPipeline(_encoder(source), TorchRuntime(source.path, source.pooling, 2), 384).run(texts)
    reference = SentenceTransformer(str(source.path), device="cpu").encode(texts, batch_size=16)
    assert output_fidelity(reference, ours).cosine_min > 0.9999
    assert stats.items == 64 and stats.real_tokens == int(stats.token_counts.sum()) and stats.padding_ratio < 0.5


@pytest.mark.slow  # runs the default recipe on MiniLM (about a minute on 2 cores)
def test_chain_selects_fastest_candidate_within_budget(minilm_packages) -> None:
    result = minilm_packages
    budget = result.package.manifest.budget
    assert budget is not None and budget.min_batch_invariance is None  # the tests' recipe admits dynamic int8
    # which the default budget refuses: its outputs move with their batch-mates (0.983 measured), fp32's do not
    fidelity = {c.name: c.fidelity for c in result.candidates}
    assert fidelity["int8-dynamic"].batch_invariance < BATCH_INVARIANT_COSINE  # type: ignore[union-attr,operator]
    assert [v.split()[0] for v in violations(FidelityBudget(), fidelity["int8-dynamic"])] == ["batch_invariance"]  # type: ignore[arg-type]
    assert admits(FidelityBudget(), fidelity["onnx-fp32"])  # type: ignore[arg-type]
    names = [c.name for c in result.candidates]
    assert names == ["torch-fp32", "onnx-fp32", "int8-dynamic"]
    admitted = [c for c in result.candidates if admits(budget, c.fidelity)]
    # ranked as served: each candidate within budget measured at its replica layout on this machine's cores
    cores = os.cpu_count() or 1
    if cores > 1:
        assert all(c.layout and c.layout["cores"] == cores for c in admitted)
        assert result.report["replica_layout"] == result.selected.layout  # type: ignore[union-attr]
        assert result.package.manifest.serving.replica_layout == result.selected.layout["chosen"]  # type: ignore[union-attr,index]
    assert result.selected is max(admitted, key=lambda c: speed(c, "throughput"))
    manifest = result.package.manifest
    assert manifest.fidelity == result.selected.fidelity and admits(budget, manifest.fidelity)
    # judged on the recipe's heldout_items, the first of the corpus's 1,000 held-out sentences
    assert manifest.fidelity.samples == 256 and result.report["data"]["splits"]["heldout"] == 256
    assert [p.name for p in manifest.chain][:1] == ["export_onnx"] or manifest.runtime == "torch"
    assert manifest.serving.max_call_items == max(manifest.profile, key=lambda r: r.items_per_s).call_items
    report_md = (result.package.root / "report.md").read_text()
    assert report_md.startswith("# Optimization report") and "ranked by throughput" in report_md
    assert "| items/s served |" in report_md
    assert "| p50 ms alone |" in report_md and "| batch inv. |" in report_md
    assert all(c.single_p50_ms and c.single_p50_ms > 0 for c in result.candidates)  # measured for each
    # where the time went: each stage until the report, each candidate's evaluation
    assert list(result.report["stage_seconds"]) == ["load", "build", "evaluate", "select"]
    assert all(c.evaluate_s is not None and c.evaluate_s > 0 for c in result.candidates)
    assert "## Where the time went" in report_md and "- int8-dynamic: passes" in report_md
    report_names = [c["name"] for c in result.report["candidates"]]
    assert report_names == names
