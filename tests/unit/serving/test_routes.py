"""Every route and every error of the application, driven in-process (tests/support/inprocess.py: the real replica
class and FastAPI app, no Ray): status, body shape and headers for the fixed requests of
tests/support/route_cases.py. Each run also writes what it saw to runs/routes/snapshot.json, the record that a
refactor compares before and after (compare two with ``diff``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.inprocess import InProcessServer
from tests.support.paths import RECIPES, ROOT
from tests.support.route_cases import CASES, CLASSIFY, EMBED, RERANK, TENSOR, TENSOR_SHAPE, Case

SNAPSHOT = ROOT / "runs" / "routes" / "snapshot.json"
KEPT_HEADERS = ("content-type", "retry-after", "allow", "optiserve-model", "optiserve-model-version")


def _tensor_onnx(path: Path) -> Path:
    """A float32 [batch, 1, 8, 8] -> logits [batch, 3] linear classifier, written with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(math.prod(TENSOR_SHAPE), 3)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["logits"]),
        ],
        "tensor",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *TENSOR_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def route_packages(tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path) -> dict[str, Path]:
    """The four packages of the route cases, each the cheapest chain (ONNX export) of a tiny model."""
    from optimizers.chain import optimize
    from tests.support.families import build_cross_encoder, build_family

    root = tmp_path_factory.mktemp("route-packages")
    sources = {
        EMBED: build_family("bert", root / "embed-src", prompts={"query": "query: "}, matryoshka_dims=(16, 32)),
        CLASSIFY: tiny_classifier_dir,
        RERANK: build_cross_encoder("bert", root / "rerank-src"),
        TENSOR: _tensor_onnx(root / "tensor-src" / "model.onnx"),
    }
    recipe = {TENSOR: RECIPES / "onnx-as-is.yaml"}
    return {
        name: optimize(source, root / name, recipe=recipe.get(name, RECIPES / "export-only.yaml")).package.root
        for name, source in sources.items()
    }


@pytest.fixture(scope="module")
def app(route_packages: dict[str, Path]) -> Iterator[InProcessServer]:
    server = InProcessServer(list(route_packages.values()), list(route_packages))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def snapshot() -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}
    yield seen
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(seen, indent=1, sort_keys=True))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if k not in {"id", "created", "fingerprint", "batching"}}
    return value


def record(response: httpx.Response) -> dict[str, Any]:
    """What a refactor must keep: status, the headers clients read, and the body (floats rounded; /metrics as
    its metric names, since counts depend on what ran before; the batching values the chain measured per build
    left out)."""
    headers = {k: response.headers[k] for k in KEPT_HEADERS if k in response.headers}
    body: Any
    if response.headers.get("content-type", "").startswith("application/json"):
        body = _rounded(response.json())
    elif response.url.path == "/metrics":
        body = sorted(line for line in response.text.splitlines() if line.startswith("# TYPE"))
    else:
        body = f"{len(response.content)} bytes"
    return {"status": response.status_code, "headers": headers, "body": body}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_route(app: InProcessServer, snapshot: dict[str, Any], case: Case) -> None:
    response = app.request(case.method, case.path, **case.send_kwargs())
    snapshot[case.name] = record(response)
    assert response.status_code == case.status, response.text[:300]
    assert "Traceback" not in response.text
    if case.status < 400 or case.path == "/docs":
        return
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    if case.path.startswith("/v2"):
        assert isinstance(error, str) and error  # KServe v2: {"error": message}
    else:
        assert set(error) == {"message", "type", "code"} and error["message"]
        if case.error_code:
            assert error["code"] == case.error_code


def test_answers_name_the_model_that_answered(app: InProcessServer) -> None:
    response = app.post("/v1/classify", json={"model": CLASSIFY, "input": "fine"})
    assert response.headers["optiserve-model"] == CLASSIFY
    assert len(response.headers["optiserve-package"]) == 12


def test_same_text_same_vector_alone_and_in_a_request(app: InProcessServer) -> None:
    alone = app.post("/v1/embeddings", json={"model": EMBED, "input": "a cat"}).json()["data"][0]["embedding"]
    pair = app.post("/v1/embeddings", json={"model": EMBED, "input": ["a cat", "x"]}).json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(alone, pair, strict=True)) < 1e-4  # fp32 export: rounding only
