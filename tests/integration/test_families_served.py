"""Encoder families served over HTTP: a package of each (BERT, RoBERTa, DistilBERT, XLM-RoBERTa, MPNet; with and
without token types, their own pad ids, mean, max, CLS and last-token pooling, declared prompts) optimized by the
chain, deployed next to each other on the session's Ray Serve instance, and answering like their packages' own
pipelines."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from corpus import load_split
from modelpkg.package import ModelPackage
from modelpkg.pipeline import TextPipeline, apply_prompt
from tests.support.families import CHAIN_POOLING, MATRYOSHKA, PROMPTS

pytestmark = pytest.mark.serve
TEXTS = load_split("heldout")[:24]


@pytest.fixture(scope="module")
def family_packages(family_chains) -> dict[str, ModelPackage]:
    return {family: result.package for family, (_, result) in family_chains.items()}


@pytest.fixture(scope="module")
def families(server, minilm_packages, family_packages) -> Iterator:
    try:
        server.deploy([p.root for p in family_packages.values()])
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def _vectors(server, body: dict) -> np.ndarray:
    response = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("family", list(CHAIN_POOLING))
def test_a_family_package_serves_its_pipeline_s_vectors_with_and_without_a_prompt(
    families, family_packages, family: str
) -> None:
    package = family_packages[family]
    name = package.manifest.name
    direct = TextPipeline.from_package(package, threads=1)
    settings = package.manifest.serving
    served = _vectors(families, {"input": TEXTS, "model": name})
    assert _cosines(served, direct.run_as_served(TEXTS, settings)).min() >= 0.999
    prompted = _vectors(families, {"input": TEXTS[:4], "model": name, "prompt_name": "query"})
    expected = direct.run_as_served(apply_prompt(package.manifest, TEXTS[:4], "query"), settings)
    assert _cosines(prompted, expected).min() >= 0.999


def test_an_unknown_prompt_is_a_json_400(families, family_packages) -> None:
    name = family_packages["xlm-roberta"].manifest.name
    response = httpx.post(
        f"{families.url}/v1/embeddings", json={"input": "x", "model": name, "prompt_name": "doc"}, timeout=30
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_prompt" and "passage, query" in error["message"]


def test_a_matryoshka_package_serves_vectors_cut_to_the_dimensions_asked(families, family_packages) -> None:
    """Widths from the model card: the chain measures each, and a request's ``dimensions`` gets the vectors cut to
    that width and re-normalized, as sentence-transformers' ``truncate_dim`` cuts them."""
    from sentence_transformers import SentenceTransformer

    package = family_packages["xlm-roberta"]
    manifest = package.manifest
    assert manifest.matryoshka_dims == list(MATRYOSHKA)
    assert manifest.fidelity is not None and [w.width for w in manifest.fidelity.widths] == [16, 8]
    assert all(w.recall_at_10 is not None for w in manifest.fidelity.widths)
    cut = _vectors(families, {"input": TEXTS, "model": manifest.name, "dimensions": 8})
    assert cut.shape == (len(TEXTS), 8)
    assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-4)
    model = SentenceTransformer(manifest.source.path, truncate_dim=8, device="cpu")
    measured = manifest.fidelity.widths[-1]  # width 8, on the held-out split these texts are from
    assert _cosines(cut, model.encode(TEXTS)).min() >= min(0.99, measured.cosine_min) - 0.01
    for dimensions in (33, 0):
        response = httpx.post(
            f"{families.url}/v1/embeddings", json={"input": "x", "model": manifest.name, "dimensions": dimensions}
        )
        assert response.status_code == 422, response.text[:500]


def test_dimensions_other_than_the_width_of_a_model_without_matryoshka_widths_are_refused(
    families, family_packages
) -> None:
    name = family_packages["mpnet"].manifest.name
    response = httpx.post(f"{families.url}/v1/embeddings", json={"input": "x", "model": name, "dimensions": 16})
    assert response.status_code == 422 and "declares no Matryoshka widths" in response.json()["error"]["message"]
    same = httpx.post(f"{families.url}/v1/embeddings", json={"input": "x", "model": name, "dimensions": 32})
    assert same.status_code == 200 and len(same.json()["data"][0]["embedding"]) == 32


def test_a_prompt_text_is_the_same_as_the_prompt_of_that_name(families, family_packages) -> None:
    name = family_packages["xlm-roberta"].manifest.name
    by_name = _vectors(families, {"input": TEXTS[0], "model": name, "prompt_name": "query"})
    by_text = _vectors(families, {"input": TEXTS[0], "model": name, "prompt": PROMPTS["query"]})
    assert _cosines(by_name, by_text).min() >= 0.9999
    both = {"input": "x", "model": name, "prompt_name": "query", "prompt": "query: "}
    response = httpx.post(f"{families.url}/v1/embeddings", json=both, timeout=30)
    assert response.status_code == 400 and "not both" in response.json()["error"]["message"]


def test_kserve_infer_takes_a_prompt_and_dimensions_as_request_parameters(families, family_packages) -> None:
    name = family_packages["xlm-roberta"].manifest.name
    text_input = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}

    def infer(parameters: dict) -> httpx.Response:
        body = {"inputs": [text_input], "parameters": parameters}
        return httpx.post(f"{families.url}/v2/models/{name}/infer", json=body, timeout=30)

    response = infer({"prompt_name": "query", "dimensions": 8})
    assert response.status_code == 200, response.text[:500]
    (output,) = response.json()["outputs"]
    assert output["shape"] == [1, 8]
    expected = _vectors(families, {"input": TEXTS[0], "model": name, "prompt_name": "query", "dimensions": 8})
    assert _cosines(np.array(output["data"], dtype=np.float32).reshape(1, 8), expected).min() >= 0.9999
    for bad in ({"prompt_name": "doc"}, {"dimensions": "8"}, {"dimensions": 64}, {"truncate": 1}):
        answer = infer(bad)
        assert answer.status_code == 400 and isinstance(answer.json()["error"], str), (bad, answer.text[:300])
