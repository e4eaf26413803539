"""Fidelity of a candidate's outputs against the source model's, on the same held-out texts."""

from __future__ import annotations

import numpy as np

from serving.package import Fidelity


def output_fidelity(reference: np.ndarray, candidate: np.ndarray, top1: bool = False) -> Fidelity:
    """Row-wise cosine similarity between two (n, dim) output matrices (embeddings or logits): mean, 1st
    percentile and minimum; with ``top1``, also the share of rows whose arg-max (predicted label) agrees."""
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(min=1e-12)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True).clip(min=1e-12)
    cosine = np.einsum("ij,ij->i", ref, cand)
    agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean()) if top1 else None
    return Fidelity(
        cosine_mean=float(cosine.mean()),
        cosine_p1=float(np.percentile(cosine, 1)),
        cosine_min=float(cosine.min()),
        samples=len(cosine),
        top1_agreement=agreement,
    )
