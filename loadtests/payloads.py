"""Request bodies (the corpus's held-out split, never seen by the optimizer's training/calibration, or the user's
own inputs file), request headers, and the pacing that turns closed-loop users into a target request rate.

Each value comes from Locust's command line / web UI (``loadtests/flags.py``) when Locust parsed it, else from
its ``OPTISERVE_*`` variable (``loadtests/settings.py``). This module does not import Locust: the CLI uses it too."""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from corpus import load_split
from loadtests import settings
from modelpkg.errors import OptiserveError

_USER_NUMBERS = itertools.count()
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class PayloadError(OptiserveError, ValueError):
    """The inputs file or a header cannot be used; the message says why in one line."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_images(path: Path) -> list[str]:
    """The image files (JPEG, PNG, WebP) in a directory, each as base64 text (what ``/v1/images/classify`` takes)."""
    found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise PayloadError(f"--payload {path}: a directory, but it holds no {', '.join(IMAGE_SUFFIXES)} files")
    return [base64.b64encode(f.read_bytes()).decode("ascii") for f in found]


def read_payload(path: Path | str) -> list[str]:
    """Non-empty inputs of a text file (one per line) or JSON Lines (objects with a ``text`` field, or strings);
    for a directory, its image files as base64 text (:func:`read_images`)."""
    path = Path(path)
    if path.is_dir():
        return read_images(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"--payload {path}: cannot read it as UTF-8 text ({exc.__class__.__name__})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if path.suffix.lower() in JSONL_SUFFIXES:
        texts = [_jsonl_text(path, n, line) for n, line in lines]
    else:
        texts = [line.strip() for _, line in lines]
    if not texts:
        raise PayloadError(f'--payload {path}: holds no inputs (one per line, or JSON Lines with a "text" field)')
    return texts


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"--payload {path}: line {number} is not JSON ({exc.msg})") from None
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f'--payload {path}: line {number} has no "text" string')
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` as (name, value)."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        raise PayloadError(f"--header takes 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def request_headers(headers: list[str], api_key: str | None) -> dict[str, str]:
    """Headers every request carries: JSON content type, the given ``Name: value`` ones, and a bearer token."""
    out = {"Content-Type": "application/json"}
    out.update(parse_header(h) for h in headers if h.strip())
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


@dataclass(frozen=True)
class LoadOptions:
    """What a Locust user sends: inputs per request, model name, payload file, headers; and its pacing."""

    inputs: int = 1
    model: str | None = None
    payload: str = ""
    headers: list[str] = field(default_factory=list)
    api_key: str = ""
    rate: float = 0.0
    rate_per_user: float = 0.0
    seed: int = 0

    @classmethod
    def current(cls, parsed: Any | None = None) -> LoadOptions:
        """From Locust's parsed options (command line or web UI) where present, else the environment."""

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(parsed, name, None) if parsed is not None else None
            return fallback if value is None else value

        headers = pick("header", settings.HEADERS.get().splitlines())
        return cls(
            inputs=int(pick("inputs", settings.INPUTS.get())),
            model=str(pick("model", settings.MODEL.get())) or None,
            payload=str(pick("payload", settings.PAYLOAD.get())),
            headers=headers.splitlines() if isinstance(headers, str) else [str(h) for h in headers],
            api_key=str(pick("api_key", settings.API_KEY.get())),
            rate=float(pick("rate", settings.RATE.get())),
            rate_per_user=float(pick("rate_per_user", settings.RATE_PER_USER.get())),
            seed=int(pick("seed", settings.SEED.get())),
        )

    def request_headers(self) -> dict[str, str]:
        return request_headers(self.headers, self.api_key or None)


@dataclass
class EmbeddingsPayloads:
    """Each request carries 1..``max_inputs`` inputs (uniformly drawn count)."""

    sentences: list[str]
    max_inputs: int = 1
    model: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_inputs < 1:
            raise ValueError(f"max_inputs must be >= 1, got {self.max_inputs}")
        if not self.sentences:
            raise ValueError("no inputs to send")
        self._rng = random.Random(self.seed)

    @classmethod
    def from_env(cls) -> EmbeddingsPayloads:
        return cls.from_options(LoadOptions.current())

    @classmethod
    def from_options(cls, options: LoadOptions) -> EmbeddingsPayloads:
        return cls(
            sentences=read_payload(options.payload) if options.payload else load_split("heldout"),
            max_inputs=options.inputs,
            model=options.model,
            # Each user (and each Locust process) draws its own sequence: base seed + process + user number.
            seed=options.seed + 100_000 * os.getpid() + next(_USER_NUMBERS),
        )

    def texts(self) -> list[str]:
        """1..max_inputs inputs (a uniformly drawn count; with replacement if the file has fewer)."""
        count = self._rng.randint(1, self.max_inputs)
        if count > len(self.sentences):
            return self._rng.choices(self.sentences, k=count)
        return self._rng.sample(self.sentences, count)

    def next(self) -> tuple[bytes, int]:
        """An OpenAI-style JSON body (``/v1/embeddings``, ``/v1/classify``) and the number of inputs in it."""
        texts = self.texts()
        body: dict[str, object] = {"input": texts[0] if len(texts) == 1 else texts}
        if self.model:
            body["model"] = self.model
        return orjson.dumps(body), len(texts)

    def next_rerank(self) -> tuple[bytes, int]:
        """A ``/v1/rerank`` body (Cohere's shape) and its number of documents: 1..max_inputs held-out texts, and
        as query the first half of the first one's words (as the chain's reranker check makes them)."""
        documents = self.texts()
        words = documents[0].split()
        body: dict[str, object] = {"query": " ".join(words[: max(1, len(words) // 2)]), "documents": documents}
        if self.model:
            body["model"] = self.model
        return orjson.dumps(body), len(documents)

    def next_kserve(self) -> tuple[bytes, int]:
        """A KServe v2 infer body with one BYTES input ``text``, and the number of inputs in it."""
        texts = self.texts()
        tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
        return orjson.dumps({"inputs": [tensor]}), len(texts)


def paced_wait(user: Any) -> float:
    """Locust ``wait_time`` for a whole-run target rate: each user paces itself (Locust's ``constant_throughput``)
    at ``--rate-per-user`` / ``OPTISERVE_RATE_PER_USER``, or at ``--rate`` / ``OPTISERVE_RATE`` (requests/s over
    all users) divided by this process's users; without either, a closed loop (no wait). ``optiserve loadtest
    --rate`` sets the per-user rate, which also holds with distributed workers. A user cannot send faster than its
    responses return, so give enough users for the rate."""
    options = getattr(user, "load_options", None) or LoadOptions.current(
        getattr(user.environment, "parsed_options", None)
    )
    per_user, rate = options.rate_per_user, options.rate
    if per_user <= 0 and rate <= 0:
        return 0.0
    from locust import constant_throughput

    if per_user <= 0:
        runner = user.environment.runner
        per_user = rate / max(1, getattr(runner, "target_user_count", None) or getattr(runner, "user_count", 1) or 1)
    return constant_throughput(per_user)(user)
