"""Errors raised while reading model packages or running them."""

from __future__ import annotations


class OptiserveError(Exception):
    """Base class for errors this project raises on purpose."""


class PackageError(OptiserveError):
    """A model package is missing, malformed, incomplete or tampered with."""


class OverloadedError(OptiserveError):
    """The replica's queue is full; the client should retry later (HTTP 503 with Retry-After)."""


class DeadlineExceededError(OptiserveError):
    """A request waited in the queue past its deadline and was dropped before running (HTTP 504)."""


class RequestTooLargeError(OptiserveError):
    """A request is more work than a replica takes at once; the client should split it (HTTP 413)."""
