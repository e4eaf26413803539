"""The data a chain runs on, in four fixed, disjoint splits: train (distillation), validation (early stopping
and accuracy-aware searches), calibration (static quantization) and held-out (the fidelity and profile that
decide). Text models use the project's corpus; tensor models name a dataset in their recipe."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from corpus import load_split, load_train_extra
from modelpkg.errors import OptiserveError
from modelpkg.hashing import sha256_file

USER_DATA_SEED = 0
MIN_USER_LINES = 100  # at least 10 validation, 10 calibration, 20 held-out and 60 training texts
JSONL_TEXT_KEYS = ("text", "input", "sentence", "query", "passage")


@dataclass(frozen=True)
class Splits:
    train: list[Any]
    validation: list[Any]
    calibration: list[Any]
    heldout: list[Any]
    heldout_labels: np.ndarray | None = None  # true labels, where the data has them (labelled accuracy)
    origin: dict[str, Any] = field(default_factory=dict)  # where the data came from and how it was split

    def with_heldout_items(self, items: int) -> Splits:
        """The same splits with the first ``items`` held-out inputs only (the recipe's ``heldout_items``)."""
        labels = self.heldout_labels[:items] if self.heldout_labels is not None else None
        return replace(self, heldout=self.heldout[:items], heldout_labels=labels)

    def describe(self) -> dict[str, Any]:
        """The report's record of the data: its origin and the size of each split."""
        sizes = {name: len(getattr(self, name)) for name in ("train", "validation", "calibration", "heldout")}
        return {**self.origin, "splits": sizes}


def text_corpus() -> Splits:
    return Splits(
        train=load_split("train"),
        validation=load_split("validation"),
        calibration=load_split("calibration"),
        heldout=load_split("heldout"),
        origin={"source": "built-in corpus (corpus/data/corpus.txt), fixed slices"},
    )


def text_corpus_large() -> Splits:
    """The built-in corpus with 40,000 more training sentences (docstrings of pinned libraries) for
    distillation; validation, calibration and held-out are the built-in corpus's, so results compare."""
    base = text_corpus()
    return Splits(
        train=base.train + list(load_train_extra()),
        validation=base.validation,
        calibration=base.calibration,
        heldout=base.heldout,
        origin={"source": "built-in corpus, train split extended by corpus/data/train_extra.txt.gz"},
    )


class DataError(OptiserveError):
    """The user's data file cannot be used; the message says why and what would work."""


def _decode(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"--data {path}: a directory; a text model takes a file of texts (one per line, or .jsonl)")
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"--data {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 (e.g. iconv -t UTF-8)"
        ) from None


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"--data {path}: line {number} is not JSON ({exc.msg})") from None
    if isinstance(value, dict):
        value = next((value[k] for k in JSONL_TEXT_KEYS if k in value), None)
    if not isinstance(value, str):
        raise DataError(
            f"--data {path}: line {number} is neither a JSON string nor an object with a text field "
            f"({', '.join(JSONL_TEXT_KEYS)})"
        )
    return value


def read_texts(path: Path) -> list[str]:
    """Distinct non-empty inputs from a text file (one per line) or JSON Lines (a string, or an object with a
    ``text``/``input``/``sentence``/``query``/``passage`` field, per line), in file order."""
    text = _decode(path)
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        items.append(_jsonl_text(path, number, line) if jsonl else line.strip())
    return list(dict.fromkeys(item for item in items if item.strip()))


def user_text(path: Path) -> Splits:
    """The user's own texts, shuffled once with a fixed seed and cut into held-out (20%, at most 1,000),
    validation and calibration (10% each, at most 200) and train (the rest): the same file always gives the
    same splits."""
    path = Path(path)
    texts = read_texts(path)
    if not texts:
        raise DataError(f"--data {path}: holds no text (one input per line, or JSON Lines)")
    if len(texts) < MIN_USER_LINES:
        raise DataError(
            f"--data {path}: {len(texts)} distinct non-empty inputs; the train, validation, calibration and "
            f"held-out splits need at least {MIN_USER_LINES}"
        )
    order = np.random.default_rng(USER_DATA_SEED).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    heldout, validation = min(1000, len(texts) // 5), min(200, len(texts) // 10)
    cut = np.cumsum([heldout, validation, validation])
    return Splits(
        train=shuffled[cut[2] :],
        validation=shuffled[cut[0] : cut[1]],
        calibration=shuffled[cut[1] : cut[2]],
        heldout=shuffled[: cut[0]],
        origin={"source": str(path.resolve()), "sha256": sha256_file(path), "seed": USER_DATA_SEED},
    )


def rerank_splits(splits: Splits) -> Splits:
    """``splits`` of texts as a reranker's (query, document) pairs, each split by itself
    (:func:`optimizers.fidelity.rerank_pairs`)."""
    from optimizers.fidelity import rerank_pairs

    return Splits(
        train=rerank_pairs(splits.train),
        validation=rerank_pairs(splits.validation),
        calibration=rerank_pairs(splits.calibration),
        heldout=rerank_pairs(splits.heldout),
        origin={**splits.origin, "pairs": "rerank_pairs: a query (half of a passage) with 8 passages, its own first"},
    )


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
        origin={"source": "scikit-learn load_digits, shuffled with seed 0"},
    )


def digits_train_labels() -> np.ndarray:
    """Labels of the digits train split (for training a teacher; the chain itself never needs them)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))
    return data.target[order][:997]


DATASETS: dict[str, Callable[[], Splits]] = {"corpus": text_corpus, "corpus-large": text_corpus_large, "digits": digits}


@cache
def load_dataset(name: str) -> Splits:
    if name not in DATASETS:
        raise OptiserveError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]()
