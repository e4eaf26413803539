"""Fidelity of a candidate's embeddings against the source model's, on the same held-out texts."""

from __future__ import annotations

import numpy as np

from serving.package import Fidelity


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """Row-wise cosine similarity between two (n, dim) embedding matrices: mean, 1st percentile and minimum."""
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"embedding shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(min=1e-12)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True).clip(min=1e-12)
    cosine = np.einsum("ij,ij->i", ref, cand)
    return Fidelity(
        cosine_mean=float(cosine.mean()),
        cosine_p1=float(np.percentile(cosine, 1)),
        cosine_min=float(cosine.min()),
        samples=len(cosine),
    )
