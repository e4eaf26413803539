"""The data a chain runs on, in four fixed, disjoint splits: train (distillation), validation (early stopping
and accuracy-aware searches), calibration (static quantization) and held-out (the fidelity and profile that
decide). Text models use the project's corpus; tensor models name a dataset in their recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from optimizers.corpus import load_split
from serving.errors import OptiserveError


@dataclass(frozen=True)
class Splits:
    train: list[Any]
    validation: list[Any]
    calibration: list[Any]
    heldout: list[Any]
    heldout_labels: np.ndarray | None = None  # true labels, where the data has them (labelled accuracy)


def text_corpus() -> Splits:
    return Splits(*(load_split(s) for s in ("train", "validation", "calibration", "heldout")))  # type: ignore[arg-type]


def digits() -> Splits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn), scaled to [0, 1], each
    item shaped (1, 8, 8); shuffled once with a fixed seed, then cut into 997 / 200 / 200 / 400."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))
    images = (data.images[order] / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target[order]
    cut = np.cumsum([997, 200, 200])
    items = list(images)
    return Splits(
        train=items[: cut[0]],
        validation=items[cut[0] : cut[1]],
        calibration=items[cut[1] : cut[2]],
        heldout=items[cut[2] :],
        heldout_labels=labels[cut[2] :],
    )


def digits_train_labels() -> np.ndarray:
    """Labels of the digits train split (for training a teacher; the chain itself never needs them)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))
    return data.target[order][:997]


DATASETS: dict[str, Callable[[], Splits]] = {"corpus": text_corpus, "digits": digits}


@cache
def load_dataset(name: str) -> Splits:
    if name not in DATASETS:
        raise OptiserveError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]()
