"""Server limits and access control, read from the environment once per replica process (through
``modelpkg.settings``, where each variable, its default and its meaning are declared; ``docs/limits.md`` lists
them and a test checks the two agree).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelpkg import settings

DEFAULT_MAX_BODY_BYTES: int = settings.MAX_BODY_BYTES.default
DEFAULT_MAX_INPUTS: int = settings.MAX_INPUTS.default
DEFAULT_MAX_INPUT_CHARS: int = settings.MAX_INPUT_CHARS.default
DEFAULT_ON_OVERFLOW: Literal["truncate", "reject"] = "truncate"
# Variables the launcher forwards from its own environment to replicas (what a replica reads).
FORWARDED_ENV = tuple(
    s.name
    for s in (
        settings.MAX_BODY_BYTES,
        settings.MAX_INPUTS,
        settings.MAX_INPUT_CHARS,
        settings.MAX_IMAGE_PIXELS,
        settings.IMAGE_DECODE_TIMEOUT_S,
        settings.BODY_TIMEOUT_S,
        settings.ON_OVERFLOW,
        settings.API_TOKEN,
        settings.API_TOKEN_FILE,
    )
)


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    max_image_pixels: int = settings.MAX_IMAGE_PIXELS.default
    image_decode_timeout_s: float = settings.IMAGE_DECODE_TIMEOUT_S.default
    body_timeout_s: float = settings.BODY_TIMEOUT_S.default
    on_overflow: Literal["truncate", "reject"] = DEFAULT_ON_OVERFLOW
    api_token: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServerLimits:
        env = dict(os.environ if env is None else env)
        overflow = settings.ON_OVERFLOW.get(env)
        return cls(
            max_body_bytes=settings.MAX_BODY_BYTES.get(env),
            max_inputs=settings.MAX_INPUTS.get(env),
            max_input_chars=settings.MAX_INPUT_CHARS.get(env),
            max_image_pixels=settings.MAX_IMAGE_PIXELS.get(env),
            image_decode_timeout_s=settings.IMAGE_DECODE_TIMEOUT_S.get(env),
            body_timeout_s=settings.BODY_TIMEOUT_S.get(env),
            on_overflow="reject" if overflow == "reject" else "truncate",
            api_token=_token(env),
        )

    def authorized(self, authorization: str | None) -> bool:
        """True when no token is configured, or the header carries it (compared in constant time)."""
        if self.api_token is None:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.api_token.encode())


def _token(env: dict[str, str]) -> str | None:
    if path := settings.API_TOKEN_FILE.get(env):
        token = Path(path).read_text(encoding="utf-8").strip()
        if not token:
            raise settings.SettingError(f"{settings.API_TOKEN_FILE.name} names {path}, which is empty")
        return token
    return settings.API_TOKEN.get(env) or None


LIMITS = ServerLimits.from_env()
