"""Rerankers (cross-encoders) through the chain: the ranking fidelity that judges them, the (query, document) pairs
they are checked on, and packages whose scores match sentence-transformers' ``CrossEncoder`` on the same
random-weight model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from corpus import load_split
from modelpkg.manifest import FidelityBudget
from modelpkg.pipeline import TextPipeline
from optimizers.budget import violations
from optimizers.chain import ChainResult, optimize
from optimizers.fidelity import RERANK_GROUP, kendall_tau, ranking_fidelity, rerank_pairs
from optimizers.source import SourceModel
from serving.api import RerankRequest, rerank_body, rerank_scores
from serving.response_cache import key_of
from tests.support.families import build_cross_encoder
from tests.support.paths import RECIPES

RECIPE = RECIPES / "families-ci.yaml"
TEXTS = load_split("heldout")[:40]


def test_kendall_tau_counts_pairs_ordered_alike() -> None:
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert kendall_tau(scores, scores * 10)[0] == pytest.approx(1.0)
    assert kendall_tau(scores, -scores)[0] == pytest.approx(-1.0)
    one_swap = np.array([[3.0, 4.0, 2.0, 1.0]])  # 1 of the 6 document pairs ordered the other way
    assert kendall_tau(scores, one_swap)[0] == pytest.approx((5 - 1) / 6)


def test_rerank_pairs_give_each_query_its_own_passage_and_the_next_ones() -> None:
    pairs = rerank_pairs(TEXTS[:20])
    assert len(pairs) == 2 * RERANK_GROUP  # the trailing partial group is left out
    first = pairs[:RERANK_GROUP]
    assert {query for query, _ in first} == {first[0][0]}
    assert [document for _, document in first] == TEXTS[:RERANK_GROUP]
    assert TEXTS[0].startswith(first[0][0])


def test_ranking_fidelity_judges_by_kendall_tau_and_the_top_document() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(8 * RERANK_GROUP, 1)).astype(np.float32)
    same = ranking_fidelity(reference, reference * 2 + 1)
    assert same.kendall_tau == pytest.approx(1.0) and same.top1_agreement == 1.0
    assert same.judged_by == ("kendall_tau", "top1_agreement") and same.score == same.kendall_tau
    reversed_ = ranking_fidelity(reference, -reference)
    assert reversed_.kendall_tau == pytest.approx(-1.0) and reversed_.top1_agreement == 0.0
    assert violations(FidelityBudget(), reversed_) == ["kendall_tau -1.0000 < 0.95", "top1_agreement 0.0000 < 0.99"]


def test_pairs_have_cache_keys_of_their_own() -> None:
    assert key_of(("ab", "c")) != key_of(("a", "bc")) != key_of("abc")


def test_rerank_bodies_take_the_shape_of_the_request() -> None:
    scores = np.array([0.1, 0.9, 0.5], dtype=np.float32)
    truncated = np.zeros(3, dtype=bool)
    cohere = RerankRequest(query="q", documents=["a", {"text": "b"}, "c"], top_n=2, return_documents=True)
    body = rerank_body("m", cohere, scores, 12, truncated, "id-1")
    assert isinstance(body, dict) and body["id"] == "id-1" and body["usage"]["total_tokens"] == 12
    assert [(r["index"], r["document"]["text"]) for r in body["results"]] == [(1, "b"), (2, "c")]
    tei = RerankRequest(query="q", texts=["a", "b", "c"], return_text=True)
    listed = rerank_body("m", tei, scores, 12, truncated, "id-2")
    assert [(r["index"], r["text"]) for r in listed] == [(1, "b"), (2, "c"), (0, "a")]  # type: ignore[index]
    assert rerank_scores(np.array([[0.0]]), "sigmoid")[0] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ChainResult]]:
    """A BERT (WordPiece, token types) and an XLM-RoBERTa (Unigram, ``</s></s>`` pair template) cross-encoder,
    the latter saved with an Identity activation, each optimized by the chain."""
    root = tmp_path_factory.mktemp("rerankers")
    built = {}
    for family, activation in (("bert", "Sigmoid"), ("xlm-roberta", "Identity")):
        source = build_cross_encoder(family, root / f"{family}-source", activation=activation)
        built[family] = (source, optimize(source, root / family, profile_items=16, recipe=RECIPE))
    return built


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_a_cross_encoder_package_scores_pairs_as_sentence_transformers_does(rerankers, family: str) -> None:
    from sentence_transformers import CrossEncoder

    source, result = rerankers[family]
    manifest = result.package.manifest
    assert manifest.task == "rerank" and manifest.output_dim == 1
    assert manifest.score_activation == ("sigmoid" if family == "bert" else "identity")
    fidelity = manifest.fidelity
    assert fidelity is not None and fidelity.kendall_tau is not None and fidelity.top1_agreement is not None
    assert fidelity.samples == 256 // RERANK_GROUP  # queries of the held-out pairs (the recipe's heldout_items: 256)
    for candidate in result.candidates:
        assert candidate.fidelity is None or candidate.fidelity.kendall_tau is not None, candidate.name

    pairs = [(TEXTS[0][:40], text) for text in TEXTS[:16]] + [(TEXTS[1], TEXTS[2] * 20)]  # the last is cut
    expected = CrossEncoder(str(source)).predict(pairs)
    logits, _ = TextPipeline.from_package(result.package, threads=1).run(pairs)
    served = rerank_scores(logits, manifest.score_activation)
    if manifest.precision == "fp32":
        assert np.abs(served - expected).max() < 1e-3
    assert kendall_tau(expected[None, :], served[None, :])[0] >= 0.9


def test_an_onnx_cross_encoder_is_a_reranker_source(rerankers, tmp_path: Path) -> None:
    """An exported cross-encoder (``logits`` of width 1) given as an ONNX file with its tokenizer."""
    onnx_fp32 = next(c for c in rerankers["bert"][1].candidates if c.name == "onnx-fp32")
    assert onnx_fp32.artifact is not None
    shutil.copy2(onnx_fp32.artifact.model_file, tmp_path / "model.onnx")
    shutil.copy2(rerankers["bert"][0] / "tokenizer.json", tmp_path / "tokenizer.json")
    source = SourceModel.load(tmp_path / "model.onnx")
    assert (source.task, source.output_dim, source.labels) == ("rerank", 1, [])


@pytest.mark.slow
def test_every_pass_that_applies_to_a_reranker(tmp_path: Path) -> None:
    """Graph fusion, int8 dynamic and static, fp16, OpenVINO (f32, NNCF int8), torch bf16, FFN pruning and a
    layer-dropped student (MSE on the logit) on a cross-encoder: each builds and is judged by ranking agreement."""
    pytest.importorskip("openvino")
    source = build_cross_encoder("bert", tmp_path / "source")
    data = tmp_path / "texts.txt"  # 320 corpus texts: 40 pairs of 8 per split at most, so it stays quick
    data.write_text("\n".join(load_split("train")[:320]) + "\n")
    recipe = RECIPE.with_name("families-all.yaml")
    budget = FidelityBudget(min_kendall_tau=-1.0, min_top1_agreement=0.0)  # random weights make no budget
    result = optimize(source, tmp_path / "package", budget=budget, recipe=recipe, data_file=data)
    outcome = {c.name: (c.status, c.reason) for c in result.candidates}
    for name, (status, reason) in outcome.items():
        assert status not in ("failed", "skipped"), (name, status, reason)
    fidelity = {c.name: c.fidelity for c in result.candidates if c.fidelity is not None}
    for name in ("fused", "openvino-f32", "onnx-fp32"):
        assert fidelity[name].kendall_tau == pytest.approx(1.0, abs=1e-3), (name, fidelity[name])
    for name in ("int8-dynamic", "int8-static", "onnx-fp16", "openvino-int8", "torch-bf16", "pruned", "student"):
        assert fidelity[name].kendall_tau is not None and -1.0 <= fidelity[name].kendall_tau <= 1.0, name


@pytest.mark.slow
def test_nncf_accuracy_control_restores_layers_by_the_reranker_s_logit(tmp_path: Path) -> None:
    """A budget plain NNCF int8 misses, so accuracy control runs, on validation data of several batches, judging
    each row by its logit's error (a one-logit row's cosine is only its sign)."""
    pytest.importorskip("nncf")
    source = build_cross_encoder("bert", tmp_path / "source")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: rerank-nncf\nprofile: {items: 16, max_batch: 2, min_batches: 2}\ncandidates:\n"
        "  - name: openvino-int8\n    steps:\n      - pass: export_onnx\n      - pass: openvino\n"
        "      - pass: nncf_quantize\n        config: {subset_size: 32, validation_samples: 64}\n"
    )
    strict = FidelityBudget(min_kendall_tau=0.9999, min_top1_agreement=1.0)
    result = optimize(source, tmp_path / "package", budget=strict, recipe=recipe)
    int8 = next(c for c in result.candidates if c.name == "openvino-int8")
    if int8.status == "ok":
        tries = int8.chain[-1].details["tries"]
        assert [t["how"] for t in tries] == ["nncf.quantize", "nncf.quantize_with_accuracy_control"]
    else:
        assert int8.status == "failed" and "after 2 tries" in int8.reason, (int8.status, int8.reason)
