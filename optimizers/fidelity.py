"""Fidelity of a candidate's outputs against the source model's, on the same held-out inputs, per task, and the
one number that ranks candidates by it (:func:`fidelity_score`, ``Fidelity.score`` for every caller).

For text embedding models there is also a task-level check, retrieval: each held-out text is a passage, and
its query is the first half of its words (:func:`retrieval_queries`); recall@10 is the share of queries whose
own passage is among the 10 passages nearest to it by cosine, among all held-out texts (:func:`recall_at_k`).
It is measured for the source and for the candidate on the same pairs, so a drop is the candidate's doing. The
pairs need nothing but the held-out split (any user's ``--data`` too): a query shares words with its passage,
as real queries mostly do, and must find it among texts on the same subjects.

For rerankers the held-out data is (query, document) pairs in groups of :data:`RERANK_GROUP`, one group per query
(:func:`rerank_pairs`): the query is the first half of one passage's words and its documents are that passage and
the passages after it. Fidelity is then per query: how alike the source's and the candidate's rankings of its
documents are (Kendall tau, :func:`kendall_tau`) and whether the top document is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from modelpkg.manifest import Fidelity, WidthFidelity
from modelpkg.pipeline import cut_vectors

Task = Literal["embedding", "classification", "rerank", "tensor"]
NEIGHBOURS = 10
RECALL_K = 10
RERANK_GROUP = 8  # documents per query in a reranker's check


def retrieval_queries(passages: list[str]) -> list[str]:
    """The retrieval check's query for each passage: the first half of its words (at least one word)."""
    queries = []
    for passage in passages:
        words = passage.split()
        queries.append(" ".join(words[: max(1, len(words) // 2)]) or passage)
    return queries


def rerank_pairs(passages: list[str], group: int = RERANK_GROUP) -> list[tuple[str, str]]:
    """(query, document) pairs, ``group`` per query, as many as there are passages (cut to a multiple of
    ``group``): for each block of ``group`` passages, the query of its first (:func:`retrieval_queries`) with each
    passage of the block, its own first."""
    pairs = []
    for start in range(0, len(passages) - group + 1, group):
        block = passages[start : start + group]
        (query,) = retrieval_queries(block[:1])
        pairs += [(query, document) for document in block]
    return pairs


def kendall_tau(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Kendall's tau (tau-a: a tie in either counts as neither agreeing nor disagreeing) between the rows of two
    (queries, documents) score matrices: 1 where the two order every pair of a query's documents alike."""

    def signs(x: np.ndarray) -> np.ndarray:
        return np.sign(x[:, :, None] - x[:, None, :])

    documents = reference.shape[1]
    if documents < 2:
        return np.ones(len(reference))
    return (signs(reference) * signs(candidate)).sum(axis=(1, 2)) / (documents * (documents - 1))


def ranking_fidelity(reference: np.ndarray, candidate: np.ndarray, group: int = RERANK_GROUP) -> Fidelity:
    """A reranker's fidelity on :func:`rerank_pairs` scores (one logit per pair, in order): per query, the cosine
    of its score vectors, Kendall tau and top-1 agreement; a trailing partial group is left out."""
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[1] != 1:
        raise ValueError(f"reranker scores must be two equal (pairs, 1) arrays: {reference.shape}, {candidate.shape}")
    queries = len(reference) // group
    if queries < 1:
        raise ValueError(f"{len(reference)} pairs make no whole group of {group} documents")
    ref = reference[: queries * group, 0].reshape(queries, group).astype(np.float64)
    cand = candidate[: queries * group, 0].reshape(queries, group).astype(np.float64)
    cosine = np.einsum("ij,ij->i", _unit(ref), _unit(cand))
    error = np.abs(cand - ref)
    scale = np.abs(ref).max()
    return Fidelity(
        cosine_mean=float(cosine.mean()),
        cosine_p1=float(np.percentile(cosine, 1)),
        cosine_min=float(cosine.min()),
        samples=queries,
        top1_agreement=float((ref.argmax(1) == cand.argmax(1)).mean()),
        kendall_tau=float(kendall_tau(ref, cand).mean()),
        max_abs_error=float(error.max()),
        max_rel_error=float(error.max() / scale) if scale > 0 else 0.0,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def recall_at_k(queries: np.ndarray, passages: np.ndarray, k: int = RECALL_K) -> float:
    """Share of queries (row ``i`` of ``queries``) whose own passage (row ``i`` of ``passages``) is among the
    ``k`` passages most cosine-similar to it (ties counted in its favour)."""
    if queries.shape != passages.shape or queries.ndim != 2:
        raise ValueError(f"queries {queries.shape} and passages {passages.shape} must be the same (n, dim)")
    similarity = _unit(queries) @ _unit(passages).T
    own = np.diagonal(similarity)
    ahead = (similarity > own[:, None]).sum(axis=1)
    return float((ahead < k).mean())


def fidelity_score(fidelity: Fidelity | Mapping[str, Any] | None) -> float:
    """The one number that ranks candidates by fidelity (selection, Pareto front, tuning, report and plots):
    ``Fidelity.score``, top-1 agreement for classifiers, else cosine mean. Takes a ``Fidelity``, its dump as
    the report holds it, or None (no fidelity: -1, below every measured one)."""
    if fidelity is None:
        return -1.0
    return (fidelity if isinstance(fidelity, Fidelity) else Fidelity(**fidelity)).score


def nn_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each row's ``k`` nearest neighbours (by cosine, among the other rows) that the candidate's
    outputs keep: what a retrieval index built on the candidate would still return."""
    k = min(k, len(reference) - 1)
    if k < 1:
        return 1.0

    def neighbours(x: np.ndarray) -> np.ndarray:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argpartition(-similarity, k, axis=1)[:, :k]

    ref, cand = neighbours(reference), neighbours(candidate)
    return float(np.mean([len(set(r) & set(c)) / k for r, c in zip(ref, cand, strict=True)]))


def top_k_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Mean share of each row's ``k`` highest-scoring labels that both models rank among their top ``k``."""
    ref = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    cand = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(r) & set(c)) / k for r, c in zip(ref, cand, strict=True)]))


def output_fidelity(
    reference: np.ndarray,
    candidate: np.ndarray,
    top1: bool = False,
    task: Task | None = None,
    labels: np.ndarray | None = None,
    queries: tuple[np.ndarray, np.ndarray] | None = None,
    widths: tuple[int, ...] = (),
) -> Fidelity:
    """Row-wise cosine between two (n, dim) output matrices (mean, 1st percentile, minimum) and max absolute /
    relative error; for classifiers (``task="classification"`` or ``top1``) top-1 agreement and, given true
    ``labels``, accuracy; for embeddings, nearest-neighbour agreement@10 and, given ``queries`` (the source's
    and the candidate's outputs for :func:`retrieval_queries` of the same inputs), recall@10 of each; for rerankers
    (``task="rerank"``), :func:`ranking_fidelity`. ``widths``: a Matryoshka model's declared widths, each measured
    again on the vectors cut to it (:func:`width_fidelity`)."""
    if task == "rerank":
        return ranking_fidelity(reference, candidate)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    classifier = top1 or task == "classification"
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(min=1e-12)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True).clip(min=1e-12)
    cosine = np.einsum("ij,ij->i", ref, cand)
    error = np.abs(candidate.astype(np.float64) - reference)
    scale = np.abs(reference).max()
    return Fidelity(
        cosine_mean=float(cosine.mean()),
        cosine_p1=float(np.percentile(cosine, 1)),
        cosine_min=float(cosine.min()),
        samples=len(cosine),
        top1_agreement=float((reference.argmax(1) == candidate.argmax(1)).mean()) if classifier else None,
        top5_agreement=top_k_agreement(reference, candidate, 5) if classifier and reference.shape[1] > 5 else None,
        nn_agreement_at10=nn_agreement(reference, candidate) if task == "embedding" else None,
        labelled_accuracy=float((candidate.argmax(1) == labels).mean()) if labels is not None else None,
        max_abs_error=float(error.max()),
        max_rel_error=float(error.max() / scale) if scale > 0 else 0.0,
        recall_at_10=recall_at_k(queries[1], candidate) if queries is not None else None,
        source_recall_at_10=recall_at_k(queries[0], reference) if queries is not None else None,
        widths=[width_fidelity(reference, candidate, width, queries) for width in widths if width < reference.shape[1]],
    )


def width_fidelity(
    reference: np.ndarray, candidate: np.ndarray, width: int, queries: tuple[np.ndarray, np.ndarray] | None = None
) -> WidthFidelity:
    """Cosine (mean, min) and recall@10 of the candidate's vectors cut to ``width`` (``cut_vectors``), against the
    source's cut the same way: what ``dimensions: width`` serves."""
    ref, cand = cut_vectors(reference, width), cut_vectors(candidate, width)
    cosine = np.einsum("ij,ij->i", ref, cand)
    recall = source_recall = None
    if queries is not None:
        recall = recall_at_k(cut_vectors(queries[1], width), cand)
        source_recall = recall_at_k(cut_vectors(queries[0], width), ref)
    return WidthFidelity(
        width=width,
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        recall_at_10=recall,
        source_recall_at_10=source_recall,
    )
