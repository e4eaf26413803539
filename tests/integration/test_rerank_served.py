"""A reranker package served next to the MiniLM embedding package on the session's Ray Serve instance:
``POST /v1/rerank`` (and ``/rerank``) in the request and response shapes of Cohere, Jina, Infinity and
text-embeddings-inference, KServe v2 infer with two BYTES inputs, and bad input answered with a JSON 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from corpus import load_split
from modelpkg.package import ModelPackage
from modelpkg.pipeline import TextPipeline
from optimizers.chain import optimize
from serving.api import rerank_scores
from serving.limits import LIMITS
from tests.support import grpc as grpc_client
from tests.support.families import build_cross_encoder
from tests.support.paths import RECIPES

pytestmark = pytest.mark.serve
RECIPE = RECIPES / "families-ci.yaml"
DOCUMENTS = load_split("heldout")[:12]
QUERY = DOCUMENTS[3][:40]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    root = tmp_path_factory.mktemp("served-reranker")
    source = build_cross_encoder("bert", root / "source")
    return optimize(source, root / "reranker", profile_items=16, recipe=RECIPE).package


@pytest.fixture(scope="module")
def served(server, minilm_packages, reranker) -> Iterator:
    try:
        server.deploy([reranker.root, minilm_packages.package.root])
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def _expected(reranker: ModelPackage, documents: list[str], raw: bool = False) -> np.ndarray:
    logits, _ = TextPipeline.from_package(reranker, threads=1).run([(QUERY, d) for d in documents])
    return rerank_scores(logits, "identity" if raw else reranker.manifest.score_activation)


def _post(server, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_documents_come_back_by_relevance_with_cohere_s_shape(served, reranker) -> None:
    response = _post(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "model": reranker.manifest.name})
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["object"] == "rerank" and body["model"] == reranker.manifest.name and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    expected = _expected(reranker, DOCUMENTS)
    assert np.abs(np.array(scores) - expected[[r["index"] for r in results]]).max() < 1e-3
    assert "document" not in results[0]


def test_top_n_documents_as_objects_and_their_text(served, reranker) -> None:
    documents = [{"text": d} for d in DOCUMENTS]
    body = {"query": QUERY, "documents": documents, "top_n": 3, "return_documents": True}
    response = _post(served, "/v1/rerank", body)
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    best = np.argsort(-_expected(reranker, DOCUMENTS), kind="stable")[:3]
    assert [r["index"] for r in results] == best.tolist()
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[i] for i in best]


def test_text_embeddings_inference_s_shape_on_its_path(served, reranker) -> None:
    body = {"query": QUERY, "texts": DOCUMENTS[:5], "raw_scores": True, "return_text": True}
    response = _post(served, "/rerank", body)
    assert response.status_code == 200, response.text[:500]
    ranked = response.json()
    assert isinstance(ranked, list) and len(ranked) == 5
    raw = _expected(reranker, DOCUMENTS[:5], raw=True)
    for item in ranked:
        assert item["text"] == DOCUMENTS[item["index"]]
        assert abs(item["score"] - raw[item["index"]]) < 1e-3


def test_kserve_infer_takes_a_query_and_documents_as_two_bytes_inputs(served, reranker) -> None:
    name = reranker.manifest.name
    metadata = httpx.get(f"{served.url}/v2/models/{name}", timeout=30).json()
    assert [i["name"] for i in metadata["inputs"]] == ["query", "document"]
    request = {
        "inputs": [
            {"name": "query", "datatype": "BYTES", "shape": [1], "data": [QUERY]},
            {"name": "document", "datatype": "BYTES", "shape": [4], "data": DOCUMENTS[:4]},
        ]
    }
    response = _post(served, f"/v2/models/{name}/infer", request)
    assert response.status_code == 200, response.text[:500]
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert np.abs(np.array(outputs["score"]["data"]) - _expected(reranker, DOCUMENTS[:4])).max() < 1e-3
    mismatched = {"inputs": [{**request["inputs"][0], "shape": [2], "data": [QUERY, QUERY]}, request["inputs"][1]]}
    for bad in (mismatched, {"inputs": request["inputs"][:1]}):
        answer = _post(served, f"/v2/models/{name}/infer", bad)
        assert answer.status_code == 400 and isinstance(answer.json()["error"], str), answer.text[:500]


def test_tritonclient_grpc_reranks_with_two_bytes_inputs(served, reranker) -> None:
    result = grpc_client.client(served).infer(
        reranker.manifest.name,
        [grpc_client.text_input([QUERY], "query"), grpc_client.text_input(DOCUMENTS[:4], "document")],
    )
    assert np.abs(result.as_numpy("score") - _expected(reranker, DOCUMENTS[:4])).max() < 1e-3
    assert result.as_numpy("logits").shape == (4, 1)


BAD_REQUESTS = {
    "missing query": ({"documents": ["a"]}, 422),
    "empty query": ({"query": " ", "documents": ["a"]}, 422),
    "empty documents": ({"query": "q", "documents": []}, 422),
    "an empty document": ({"query": "q", "documents": ["a", ""]}, 422),
    "a number as a document": ({"query": "q", "documents": ["a", 3]}, 422),
    "documents and texts": ({"query": "q", "documents": ["a"], "texts": ["b"]}, 422),
    "neither documents nor texts": ({"query": "q"}, 422),
    "top_n of 0": ({"query": "q", "documents": ["a"], "top_n": 0}, 422),
    "an unknown field": ({"query": "q", "documents": ["a"], "rank_fields": ["x"]}, 422),
    "too many documents": ({"query": "q", "documents": ["d"] * (LIMITS.max_inputs + 1)}, 413),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_rerank_requests_get_a_json_4xx(served, case: str) -> None:
    body, status = BAD_REQUESTS[case]
    response = _post(served, "/v1/rerank", body)
    assert response.status_code == status, response.text[:500]
    assert response.json()["error"]["message"]


def test_a_pair_over_the_token_limit_is_refused_when_the_request_says_so(served) -> None:
    long_document = " ".join(DOCUMENTS) * 4
    response = _post(served, "/v1/rerank", {"query": QUERY, "documents": [long_document], "truncate": False})
    assert response.status_code == 422 and response.json()["error"]["code"] == "input_too_long"
    cut = _post(served, "/v1/rerank", {"query": QUERY, "documents": [long_document]})
    assert cut.status_code == 200 and cut.json()["results"][0]["truncated"] is True


def test_models_of_other_tasks_point_to_their_route(served, reranker, minilm_packages) -> None:
    embedding_model = minilm_packages.package.manifest.name
    wrong = _post(served, "/v1/rerank", {"query": "q", "documents": ["a"], "model": embedding_model})
    assert wrong.status_code == 400 and "/v1/embeddings" in wrong.json()["error"]["message"]
    other = _post(served, "/v1/embeddings", {"input": "q", "model": reranker.manifest.name})
    assert other.status_code == 400 and "/v1/rerank" in other.json()["error"]["message"]


def test_rerank_requests_are_counted_in_the_metrics(served) -> None:
    assert _post(served, "/v1/rerank", {"query": "q", "documents": ["a"]}).status_code == 200
    metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert 'route="/v1/rerank"' in metrics


def test_a_short_locust_run_against_the_reranker_has_no_failures(served, reranker, tmp_path: Path) -> None:
    from loadtests.runner import LoadTestConfig, run_loadtest

    config = LoadTestConfig(
        host=served.url,
        out_dir=tmp_path,
        users=4,
        duration_s=5,
        max_inputs=8,
        api="rerank",
        model=reranker.manifest.name,
        plots=False,
        label="rerank",
    )
    summary = run_loadtest(config)
    assert summary.client["requests"] > 10 and summary.failures == 0
    assert set(summary.server["requests_by_code"]) == {"200"}
    assert summary.server["items"] >= summary.client["requests"]  # 1..8 documents (pairs) per request
