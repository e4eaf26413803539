"""Request bodies drawn from the corpus's held-out split (never seen by the optimizer's training/calibration), and
the pacing that turns closed-loop users into a target request rate."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from typing import Any

import orjson

from corpus import load_split
from serving import settings

_USER_NUMBERS = itertools.count()
INPUTS_ENV = settings.INPUTS.name
MODEL_ENV = settings.MODEL.name
RATE_ENV = settings.RATE.name
RATE_PER_USER_ENV = settings.RATE_PER_USER.name


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
            max_inputs=settings.INPUTS.get(),
            model=settings.MODEL.get() or None,
            # Each user (and each Locust process) draws its own sequence: base seed + process + user number.
            seed=settings.SEED.get() + 100_000 * os.getpid() + next(_USER_NUMBERS),
        )

    def texts(self) -> list[str]:
        """1..max_inputs held-out sentences (a uniformly drawn count; their lengths are the corpus's own)."""
        return self._rng.sample(self.sentences, self._rng.randint(1, self.max_inputs))

    def next(self) -> tuple[bytes, int]:
        """An OpenAI-style JSON body (``/v1/embeddings``, ``/v1/classify``) and the number of inputs in it."""
        texts = self.texts()
        body: dict[str, object] = {"input": texts[0] if len(texts) == 1 else texts}
        if self.model:
            body["model"] = self.model
        return orjson.dumps(body), len(texts)

    def next_kserve(self) -> tuple[bytes, int]:
        """A KServe v2 infer body with one BYTES input ``text``, and the number of inputs in it."""
        texts = self.texts()
        tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
        return orjson.dumps({"inputs": [tensor]}), len(texts)


def paced_wait(user: Any) -> float:
    """Locust ``wait_time`` for a whole-run target rate: each user paces itself (Locust's ``constant_throughput``)
    at ``OPTISERVE_RATE_PER_USER``, or at ``OPTISERVE_RATE`` (requests/s over all users) divided by this process's
    users; without either, a closed loop (no wait). ``optiserve loadtest --rate`` sets the per-user rate, which
    also holds with distributed workers. A user cannot send faster than its responses return, so give enough
    users for the rate."""
    per_user = settings.RATE_PER_USER.get()
    rate = settings.RATE.get()
    if per_user <= 0 and rate <= 0:
        return 0.0
    from locust import constant_throughput

    if per_user <= 0:
        runner = user.environment.runner
        per_user = rate / max(1, getattr(runner, "target_user_count", None) or getattr(runner, "user_count", 1) or 1)
    return constant_throughput(per_user)(user)
