"""The project's text corpus: sentences from the Python standard library's docstrings, frozen in
``corpus/data/corpus.txt`` by ``scripts/build_corpus.py``. Splits are fixed slices of that file.

``corpus/data/train_extra.txt.gz`` is extra training text for distillation: 40,000 sentences from the docstrings of
the libraries the project pins (provenance in ``train_extra.json``), none of them in ``corpus.txt``.

Its own package, so that the optimizer (calibration, validation, held-out fidelity), the load tests (payloads)
and the benchmarks share one corpus without importing each other."""

from __future__ import annotations

import gzip
from functools import cache
from importlib.resources import files
from typing import Literal

Split = Literal["train", "validation", "calibration", "heldout"]
HELDOUT_SIZE = 1000
CALIBRATION_SIZE = 200
VALIDATION_SIZE = 200  # early stopping and accuracy-aware searches; the held-out split only judges the result


@cache
def _sentences() -> tuple[str, ...]:
    text = files("corpus").joinpath("data/corpus.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def load_split(split: Split) -> list[str]:
    """The sentences of one split; the four splits never overlap."""
    items = _sentences()
    held_start = len(items) - HELDOUT_SIZE
    cal_start = held_start - CALIBRATION_SIZE
    val_start = cal_start - VALIDATION_SIZE
    bounds = {
        "train": (0, val_start),
        "validation": (val_start, cal_start),
        "calibration": (cal_start, held_start),
        "heldout": (held_start, len(items)),
    }
    if split not in bounds:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(bounds)}")
    start, end = bounds[split]
    return list(items[start:end])


@cache
def load_train_extra() -> tuple[str, ...]:
    """Extra training sentences (docstrings of pinned libraries), disjoint from every split of the corpus."""
    raw = gzip.decompress(files("corpus").joinpath("data/train_extra.txt.gz").read_bytes())
    return tuple(line for line in raw.decode("utf-8").splitlines() if line.strip())
