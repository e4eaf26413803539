"""A fixed set of requests covering every route and every error a route answers, for the in-process route tests
(four models: an embedding model with a prompt and Matryoshka widths, a classifier, a reranker, a tensor model)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

EMBED, CLASSIFY, RERANK, TENSOR = "embed", "classify", "rerank", "tensor"
TENSOR_SHAPE = (1, 8, 8)  # the built-in tensor data (scikit-learn digits) the chain calibrates and judges with
LONG_TEXT = "word " * 2000


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None  # the OpenAI-style error's code, where the route answers one

    def send_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": dict(self.headers)}
        if self.json_body is not None:
            kwargs["content"] = json.dumps(self.json_body).encode()
            kwargs["headers"].setdefault("content-type", "application/json")
        elif self.content is not None:
            kwargs["content"] = self.content
        return kwargs


def _tensor(rows: int, shape: tuple[int, ...] = TENSOR_SHAPE) -> dict[str, Any]:
    size = rows * math.prod(shape)
    return {"inputs": [{"name": "input", "shape": [rows, *shape], "datatype": "FP32", "data": [0.5] * size}]}


def _texts(*texts: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}]}


CASES = [
    # -- OpenAI-style routes, answered
    Case("embeddings", "POST", "/v1/embeddings", 200, {"model": EMBED, "input": ["a cat", "a dog sat"]}),
    Case("embeddings-one", "POST", "/v1/embeddings", 200, {"input": "only one model takes text embeddings"}),
    Case("embeddings-base64", "POST", "/v1/embeddings", 200, {"input": "x", "encoding_format": "base64"}),
    Case("embeddings-cut", "POST", "/v1/embeddings", 200, {"input": "x", "dimensions": 16}),
    Case("embeddings-prompt", "POST", "/v1/embeddings", 200, {"input": "x", "prompt_name": "query"}),
    Case("classify", "POST", "/v1/classify", 200, {"model": CLASSIFY, "input": ["good", "bad"]}),
    Case("rerank", "POST", "/v1/rerank", 200, {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}),
    Case(
        "rerank-unversioned", "POST", "/rerank", 200, {"query": "q", "documents": [{"text": "a"}], "raw_scores": True}
    ),
    Case("models", "GET", "/v1/models", 200),
    # -- OpenAI-style errors
    Case("not-json", "POST", "/v1/embeddings", 400, content=b"{nope", headers={"content-type": "application/json"}),
    Case("missing-input", "POST", "/v1/embeddings", 422, {"model": EMBED}),
    Case("wrong-type", "POST", "/v1/embeddings", 422, {"input": 5}),
    Case("unknown-model", "POST", "/v1/embeddings", 404, {"model": "nope", "input": "x"}, error_code="model_not_found"),
    Case("wrong-task", "POST", "/v1/classify", 400, {"model": EMBED, "input": "x"}, error_code="wrong_task"),
    Case("tensor-model-text", "POST", "/v1/classify", 400, {"model": TENSOR, "input": "x"}, error_code="wrong_input"),
    Case(
        "bad-dimensions", "POST", "/v1/embeddings", 422, {"input": "x", "dimensions": 9999}, error_code="invalid_value"
    ),
    Case(
        "unknown-prompt", "POST", "/v1/embeddings", 400, {"input": "x", "prompt_name": "?"}, error_code="unknown_prompt"
    ),
    Case(
        "too-long", "POST", "/v1/embeddings", 422, {"input": LONG_TEXT, "truncate": False}, error_code="input_too_long"
    ),
    Case("too-many-inputs", "POST", "/v1/embeddings", 413, {"input": ["x"] * 5000}),
    Case("empty-input", "POST", "/v1/embeddings", 422, {"input": []}),
    Case("rerank-no-documents", "POST", "/v1/rerank", 422, {"query": "q", "documents": []}),
    Case("unknown-path", "GET", "/v1/nothing", 404),
    Case("wrong-method", "GET", "/v1/embeddings", 405),
    Case("docs-off", "GET", "/docs", 404),
    # -- KServe v2, answered
    Case("server-metadata", "GET", "/v2", 200),
    Case("live", "GET", "/v2/health/live", 200),
    Case("ready", "GET", "/v2/health/ready", 200),
    Case("model-metadata", "GET", f"/v2/models/{EMBED}", 200),
    Case("version-metadata", "GET", f"/v2/models/{EMBED}/versions/onnx-fp32", 200),
    Case("model-ready", "GET", f"/v2/models/{CLASSIFY}/ready", 200),
    Case("version-ready", "GET", f"/v2/models/{CLASSIFY}/versions/onnx-fp32/ready", 200),
    Case("infer-text", "POST", f"/v2/models/{EMBED}/infer", 200, _texts("a", "b")),
    Case("infer-classify", "POST", f"/v2/models/{CLASSIFY}/infer", 200, _texts("good")),
    Case("infer-version", "POST", f"/v2/models/{CLASSIFY}/versions/onnx-fp32/infer", 200, _texts("good")),
    Case(
        "infer-rerank",
        "POST",
        f"/v2/models/{RERANK}/infer",
        200,
        {
            "inputs": [
                {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["q"]},
                {"name": "document", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
            ]
        },
    ),
    Case("infer-tensor", "POST", f"/v2/models/{TENSOR}/infer", 200, _tensor(3)),
    Case(
        "infer-binary-out",
        "POST",
        f"/v2/models/{TENSOR}/infer",
        200,
        {**_tensor(1), "parameters": {"binary_data_output": True}},
    ),
    Case("metrics", "GET", "/metrics", 200),
    Case("openapi", "GET", "/openapi.json", 200),
    # -- KServe v2 errors (KServe bodies: {"error": message})
    Case("kserve-unknown-model", "GET", "/v2/models/nope", 404),
    Case("kserve-unknown-version", "GET", f"/v2/models/{EMBED}/versions/9", 404),
    Case("kserve-infer-unknown", "POST", "/v2/models/nope/infer", 404, _texts("a")),
    Case("kserve-not-json", "POST", f"/v2/models/{EMBED}/infer", 400, content=b"[1,"),
    Case("kserve-no-inputs", "POST", f"/v2/models/{EMBED}/infer", 400, {"inputs": []}),
    Case(
        "kserve-wrong-input",
        "POST",
        f"/v2/models/{EMBED}/infer",
        400,
        {"inputs": [{"name": "other", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
    ),
    Case("kserve-bad-shape", "POST", f"/v2/models/{TENSOR}/infer", 400, _tensor(2, (1, 8, 9))),
    Case(
        "kserve-shape-data",
        "POST",
        f"/v2/models/{TENSOR}/infer",
        400,
        {"inputs": [{"name": "input", "shape": [2, *TENSOR_SHAPE], "datatype": "FP32", "data": [1.0]}]},
    ),
    Case(
        "kserve-bad-parameter",
        "POST",
        f"/v2/models/{EMBED}/infer",
        400,
        {**_texts("a"), "parameters": {"dimensions": "wide"}},
    ),
    Case(
        "kserve-parameter-task",
        "POST",
        f"/v2/models/{CLASSIFY}/infer",
        400,
        {**_texts("a"), "parameters": {"dimensions": 8}},
    ),
    Case(
        "kserve-bad-length-header",
        "POST",
        f"/v2/models/{TENSOR}/infer",
        400,
        _tensor(1),
        headers={"inference-header-content-length": "zz"},
    ),
]
