"""HTTP request/response schemas and the JSON error shape ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints, field_validator
from starlette.responses import Response

from serving.limits import LIMITS

# The schema states the limits (for clients and fuzzers); the validator below gives one clear message.
Text = Annotated[StrictStr, StringConstraints(min_length=1, max_length=LIMITS.max_input_chars, pattern=r"\S")]


class TextRequest(BaseModel):
    """Fields every text route takes: ``input`` (one string or a list) and optionally ``model``."""

    model_config = ConfigDict(extra="forbid")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=LIMITS.max_inputs)] = Field(
        description=f"a string, or a list of 1..{LIMITS.max_inputs} strings, each with a non-space character "
        f"and at most {LIMITS.max_input_chars} characters"
    )
    model: StrictStr | None = Field(default=None, description="which model; optional when only one fits the route")
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: object) -> object:
        """One clear message per problem, instead of one per member of the union."""
        if isinstance(value, str):
            items: list[object] = [value]
        elif isinstance(value, list):
            if not value:
                raise ValueError("must not be an empty list")
            if len(value) > LIMITS.max_inputs:
                raise ValueError(f"at most {LIMITS.max_inputs} inputs per request, got {len(value)}")
            if all(isinstance(v, int | list) for v in value):
                raise ValueError("token-id inputs are not supported; send text (a string or a list of strings)")
            items = value
        else:
            raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")
        check_texts(items)
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def check_texts(items: list[object]) -> None:
    """Raise ValueError naming the first item that is not a non-blank string within the length limit."""
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise ValueError(f"item {index} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"item {index} is empty")
        if len(text) > LIMITS.max_input_chars:
            raise ValueError(f"item {index} has {len(text)} characters; at most {LIMITS.max_input_chars} are accepted")


class EmbeddingsRequest(TextRequest):
    """OpenAI ``POST /v1/embeddings`` request (text inputs only)."""

    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)


class ClassifyRequest(TextRequest):
    """``POST /v1/classify``: labels and probabilities for each input, from a classification package."""


class ApiError(Exception):
    """An error to answer with, as JSON, without a traceback: ``{"error": {"message", "type", "code"}}``, or
    ``{"error": message}`` on KServe v2 routes, as that protocol specifies."""

    def __init__(self, status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}

    def response(self, kserve: bool = False) -> Response:
        detail = self.message if kserve else {"message": self.message, "type": self.type, "code": self.code}
        return json_response({"error": detail}, self.status, self.headers)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def embeddings_body(
    model: str,
    embeddings: np.ndarray,
    tokens: int,
    truncated: np.ndarray,
    encoding_format: Literal["float", "base64"],
) -> dict[str, object]:
    """OpenAI response body. ``base64`` is the little-endian float32 bytes of each vector, as OpenAI sends it.
    Each item also says whether its input was cut to the model's token limit (``truncated``)."""
    if encoding_format == "base64":
        rows: list[object] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in embeddings]
    else:
        rows = list(embeddings)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": row, "truncated": bool(cut)}
            for i, (row, cut) in enumerate(zip(rows, truncated, strict=True))
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def classification_body(
    model: str, logits: np.ndarray, labels: list[str], tokens: int, truncated: np.ndarray
) -> dict[str, object]:
    """Per input: the top label, its probability, and every label's probability (softmax of the logits)."""
    probabilities = softmax(logits)
    return {
        "object": "list",
        "data": [
            {
                "object": "classification",
                "index": i,
                "label": labels[int(row.argmax())],
                "score": float(row.max()),
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
                "truncated": bool(cut),
            }
            for i, (row, cut) in enumerate(zip(probabilities, truncated, strict=True))
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
