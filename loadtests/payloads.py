"""Request bodies drawn from the corpus's held-out split (never seen by the optimizer's training/calibration)."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass

import orjson

from optimizers.corpus import load_split

_USER_NUMBERS = itertools.count()
INPUTS_ENV = "OPTISERVE_INPUTS"
MODEL_ENV = "OPTISERVE_MODEL"
SEED_ENV = "OPTISERVE_SEED"


@dataclass
class EmbeddingsPayloads:
    """Each request carries 1..``max_inputs`` held-out sentences (uniformly drawn count)."""

    sentences: list[str]
    max_inputs: int = 1
    model: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_inputs < 1:
            raise ValueError(f"max_inputs must be >= 1, got {self.max_inputs}")
        self._rng = random.Random(self.seed)

    @classmethod
    def from_env(cls) -> EmbeddingsPayloads:
        return cls(
            sentences=load_split("heldout"),
            max_inputs=int(os.environ.get(INPUTS_ENV, "1")),
            model=os.environ.get(MODEL_ENV) or None,
            # Each user (and each Locust process) draws its own sequence: base seed + process + user number.
            seed=int(os.environ.get(SEED_ENV, "0")) + 100_000 * os.getpid() + next(_USER_NUMBERS),
        )

    def next(self) -> tuple[bytes, int]:
        """A JSON body and the number of inputs in it."""
        count = self._rng.randint(1, self.max_inputs)
        texts = self._rng.sample(self.sentences, count)
        body: dict[str, object] = {"input": texts[0] if count == 1 else texts}
        if self.model:
            body["model"] = self.model
        return orjson.dumps(body), count
