"""Server limits and access control, read from the environment once per replica process.

Every default is a named constant here; ``docs/limits.md`` quotes them and a test checks the two agree.

| variable                        | default     | what happens past it                                      |
|---------------------------------|-------------|-----------------------------------------------------------|
| OPTISERVE_MAX_BODY_BYTES        | 16 MiB      | 413, also for chunked bodies (counted while streaming)    |
| OPTISERVE_MAX_INPUTS            | 2048        | 422                                                       |
| OPTISERVE_MAX_INPUT_CHARS       | 32768       | 422                                                       |
| OPTISERVE_ON_OVERFLOW           | truncate    | inputs longer than the model's token limit: ``truncate``  |
|                                 |             | (response item says ``"truncated": true``) or ``reject``  |
|                                 |             | (422)                                                     |
| OPTISERVE_API_TOKEN[_FILE]      | unset       | when set, inference routes need ``Authorization: Bearer`` |
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_INPUT_CHARS = 32_768
DEFAULT_ON_OVERFLOW: Literal["truncate", "reject"] = "truncate"

ENV_MAX_BODY_BYTES = "OPTISERVE_MAX_BODY_BYTES"
ENV_MAX_INPUTS = "OPTISERVE_MAX_INPUTS"
ENV_MAX_INPUT_CHARS = "OPTISERVE_MAX_INPUT_CHARS"
ENV_ON_OVERFLOW = "OPTISERVE_ON_OVERFLOW"
ENV_API_TOKEN = "OPTISERVE_API_TOKEN"
ENV_API_TOKEN_FILE = "OPTISERVE_API_TOKEN_FILE"
# Variables the launcher forwards from its own environment to replicas.
FORWARDED_ENV = (
    ENV_MAX_BODY_BYTES,
    ENV_MAX_INPUTS,
    ENV_MAX_INPUT_CHARS,
    ENV_ON_OVERFLOW,
    ENV_API_TOKEN,
    ENV_API_TOKEN_FILE,
)


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    on_overflow: Literal["truncate", "reject"] = DEFAULT_ON_OVERFLOW
    api_token: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServerLimits:
        env = dict(os.environ if env is None else env)
        overflow = env.get(ENV_ON_OVERFLOW) or DEFAULT_ON_OVERFLOW
        if overflow not in ("truncate", "reject"):
            raise ValueError(f"{ENV_ON_OVERFLOW} must be 'truncate' or 'reject', got {overflow!r}")
        return cls(
            max_body_bytes=_positive_int(env, ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES),
            max_inputs=_positive_int(env, ENV_MAX_INPUTS, DEFAULT_MAX_INPUTS),
            max_input_chars=_positive_int(env, ENV_MAX_INPUT_CHARS, DEFAULT_MAX_INPUT_CHARS),
            on_overflow=overflow,  # type: ignore[arg-type]
            api_token=_token(env),
        )

    def authorized(self, authorization: str | None) -> bool:
        """True when no token is configured, or the header carries it (compared in constant time)."""
        if self.api_token is None:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.api_token.encode())


def _token(env: dict[str, str]) -> str | None:
    if path := env.get(ENV_API_TOKEN_FILE):
        token = Path(path).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{ENV_API_TOKEN_FILE} names {path}, which is empty")
        return token
    return env.get(ENV_API_TOKEN) or None


LIMITS = ServerLimits.from_env()
