"""The OpenAI-style routes' request and response schemas (embeddings, classify, rerank)."""

from __future__ import annotations

import base64
import re
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from serving.errors import TooManyInputsError
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
    truncate: StrictBool | None = Field(
        default=None,
        description="an input longer than the model's token limit: true cuts it (its item says truncated), false "
        "answers 422 input_too_long; unset: the server's policy (OPTISERVE_ON_OVERFLOW)",
    )
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: object) -> object:
        """One clear message per problem, instead of one per member of the union."""
        if isinstance(value, str):
            items: list[object] = [value]
        elif isinstance(value, list):
            check_count(value, "inputs")
            if all(isinstance(v, int | list) for v in value):
                raise ValueError("token-id inputs are not supported; send text (a string or a list of strings)")
            items = value
        else:
            raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")
        check_texts(items)
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# A character a tokenizer keeps: not whitespace, not a control character (C0, DEL, C1), not a zero-width or
# invisible formatting character (U+200B..U+200F, U+2028..U+202F, U+2060..U+206F, U+FEFF).
_VISIBLE = re.compile("[^\\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff]")


def check_count(items: list[object], what: str) -> None:
    """Raise for an empty list, or (as ``TooManyInputsError.code``, answered 413) one longer than the inputs limit."""
    if not items:
        raise ValueError("must not be an empty list")
    if len(items) > LIMITS.max_inputs:
        raise PydanticCustomError(
            TooManyInputsError.code,
            "at most {limit} {what} per request, got {count}",
            {"limit": LIMITS.max_inputs, "what": what, "count": len(items)},
        )


def check_texts(items: list[object]) -> None:
    """Raise ValueError naming the first item that is not a string with a visible character within the length
    limit."""
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise ValueError(f"item {index} must be a string, got {type(text).__name__}")
        if _VISIBLE.search(text) is None:
            raise ValueError(f"item {index} is empty (only whitespace, control or zero-width characters)")
        if len(text) > LIMITS.max_input_chars:
            raise ValueError(f"item {index} has {len(text)} characters; at most {LIMITS.max_input_chars} are accepted")


class EmbeddingsRequest(TextRequest):
    """OpenAI ``POST /v1/embeddings`` request (text inputs only)."""

    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        default=None,
        gt=0,
        description="a Matryoshka package (its manifest's matryoshka_dims): the vectors cut to this width and "
        "re-normalized; other packages: their width only",
    )
    prompt_name: StrictStr | None = Field(
        default=None,
        max_length=256,
        description="a prompt the package declares (e.g. query, passage), prepended to every input; unset: the "
        "package's default prompt, if it has one",
    )
    prompt: StrictStr | None = Field(
        default=None,
        max_length=1024,
        description="a prompt text prepended to every input instead (e.g. 'Represent this sentence for searching "
        "relevant passages: '); not with prompt_name",
    )


class ClassifyRequest(TextRequest):
    """``POST /v1/classify``: labels and probabilities for each input, from a classification package."""


class ImageClassifyRequest(BaseModel):
    """``POST /v1/images/classify``: the top labels of each image, from an image classification package."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=LIMITS.max_inputs)] = Field(
        description=f"an image, or a list of 1..{LIMITS.max_inputs}: each a JPEG, PNG or WebP file as base64 text "
        "or as a data URL (data:image/jpeg;base64,...)"
    )
    model: StrictStr | None = Field(default=None, description="which model; optional when only one fits the route")
    top_k: StrictInt = Field(default=5, ge=1, description="how many labels to return per image, best first")
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: object) -> object:
        if isinstance(value, list):
            check_count(value, "images")
        elif not isinstance(value, str):
            raise ValueError(f"must be a string (base64 or a data URL) or a list of them, got {type(value).__name__}")
        return value

    def images(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def image_classification_body(model: str, logits: np.ndarray, labels: list[str], top_k: int) -> dict[str, object]:
    """Per image: the top label and its probability, and the ``top_k`` best labels with theirs (softmax)."""
    probabilities = softmax(logits)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return {
        "object": "list",
        "data": [
            {
                "object": "classification",
                "index": i,
                "label": labels[int(order[0])],
                "score": float(row[order[0]]),
                "top": [{"label": labels[int(j)], "score": float(row[j])} for j in order],
            }
            for i, (row, order) in enumerate(zip(probabilities, best, strict=True))
        ],
        "model": model,
        "usage": {"images": len(logits)},
    }


# The text route of each task: what a request for a model of another task is pointed to.
TASK_ROUTES = {"embedding": "/v1/embeddings", "classification": "/v1/classify", "rerank": "/v1/rerank"}
IMAGE_ROUTE = "/v1/images/classify"  # image classifiers' JSON route


class RerankDocument(BaseModel):
    """A document as an object (Cohere's older shape): its ``text``."""

    model_config = ConfigDict(extra="forbid")
    text: Text


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` (and ``/rerank``): a query's documents by relevance, from a reranker (cross-encoder)
    package. Takes the request shapes of Cohere, Jina and Infinity (``documents``, ``top_n``,
    ``return_documents``) and of text-embeddings-inference (``texts``, ``return_text``, ``raw_scores``); the
    answer is in the shape of the one used (:func:`rerank_body`)."""

    model_config = ConfigDict(extra="forbid")

    query: Text = Field(description=f"the query: a string with a non-space character, at most {LIMITS.max_input_chars}")
    documents: Annotated[list[Text | RerankDocument], Field(min_length=1, max_length=LIMITS.max_inputs)] | None = Field(
        default=None, description=f"1..{LIMITS.max_inputs} documents: strings, or objects with a text"
    )
    texts: Annotated[list[Text], Field(min_length=1, max_length=LIMITS.max_inputs)] | None = Field(
        default=None, description="text-embeddings-inference's name for the documents (strings); answered as a list"
    )
    top_n: StrictInt | None = Field(default=None, gt=0, description="return only the n most relevant; unset: all")
    return_documents: StrictBool = Field(default=False, description="each result carries its document's text")
    return_text: StrictBool = Field(default=False, description="text-embeddings-inference's return_documents")
    raw_scores: StrictBool = Field(default=False, description="the model's logit, not the activated score")
    truncate: StrictBool | None = Field(
        default=None,
        description="a pair longer than the model's token limit: true cuts it (longest text first), false answers "
        "422 input_too_long; unset: the server's policy (OPTISERVE_ON_OVERFLOW)",
    )
    truncation_direction: Literal["Right", "right"] = Field(default="Right", description="only Right is supported")
    model: StrictStr | None = Field(default=None, description="which model; optional when one reranker is served")
    user: StrictStr | None = None

    @field_validator("documents", "texts", mode="before")
    @classmethod
    def _check_documents(cls, value: object) -> object:
        """One clear message per problem (as for ``input``)."""
        if value is None:
            return value
        if not isinstance(value, list):
            raise ValueError(f"must be a list of strings, got {type(value).__name__}")
        check_count(value, "documents")
        check_texts([item.get("text") if isinstance(item, dict) else item for item in value])
        return value

    @model_validator(mode="after")
    def _one_list(self) -> RerankRequest:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("give the documents as either documents or texts (one of the two)")
        return self

    def document_texts(self) -> list[str]:
        items = self.documents if self.documents is not None else self.texts or []
        return [item.text if isinstance(item, RerankDocument) else item for item in items]


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


def rerank_scores(logits: np.ndarray, activation: Literal["sigmoid", "identity"]) -> np.ndarray:
    """Each pair's score from its relevance logit (``logits``: (pairs, 1)), as the package's cross-encoder
    activates it."""
    column = logits[:, 0].astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-column)) if activation == "sigmoid" else column
    return scores.astype(np.float32)


def rerank_body(
    model: str,
    request: RerankRequest,
    scores: np.ndarray,
    tokens: int,
    truncated: np.ndarray,
    request_id: str,
) -> object:
    """The documents by descending score (the first ``top_n``). For a ``texts`` request, text-embeddings-inference's
    answer: a list of ``{index, score[, text]}``; else Cohere's (as Jina and Infinity answer): ``{id, model,
    results: [{index, relevance_score[, document: {text}]}], usage}``. Each result also says whether its pair was
    cut to the model's token limit (``truncated``)."""
    documents = request.document_texts()
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[: request.top_n]
    show = request.return_documents or request.return_text
    if request.texts is not None:
        return [
            {"index": i, "score": float(scores[i]), **({"text": documents[i]} if show else {})}
            | {"truncated": bool(truncated[i])}
            for i in order
        ]
    results = [
        {"index": i, "relevance_score": float(scores[i])}
        | ({"document": {"text": documents[i]}} if show else {})
        | {"truncated": bool(truncated[i])}
        for i in order
    ]
    return {
        "id": request_id,
        "object": "rerank",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
