"""The errors this project raises on purpose. Each class declares once how a server answers it: the HTTP
``status``, the OpenAI-style error ``type`` and ``code``, headers, and whether the client sees the error's own
text (``public_message`` None) or a fixed one (server-side failures: the text stays in the log).
``serving/errors.py`` adds the errors of the HTTP layer and builds the response bodies from these fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar


class OptiserveError(Exception):
    """Base class for errors this project raises on purpose (answered 500 unless a subclass says otherwise)."""

    status: int = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    public_message: ClassVar[str | None] = "internal server error"
    headers: ClassVar[Mapping[str, str]] = {}

    @property
    def client_message(self) -> str:
        """What a client is told: the error's own text, or the class's fixed message for server-side failures."""
        return self.public_message if self.public_message is not None else str(self)


class PackageError(OptiserveError):
    """A model package is missing, malformed, incomplete or tampered with."""

    code = "package_error"


class OverloadedError(OptiserveError):
    """The replica's queue is full; the client should retry later."""

    status = 503
    type = "overloaded_error"
    code = "overloaded"
    public_message = "server is overloaded; retry later"
    headers = MappingProxyType({"Retry-After": "1"})


class DeadlineExceededError(OptiserveError):
    """A request waited in the queue past its deadline and was dropped before running."""

    status = 504
    type = "timeout_error"
    code = "queue_timeout"
    public_message = None


class RequestTooLargeError(OptiserveError):
    """A request is more work than a replica takes at once; the client should split it."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    public_message = None
