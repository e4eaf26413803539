"""Waiting for something a benchmark started: a condition, or a server that answers an embedding."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.5) -> None:
    """Return once ``predicate()`` is true (connection errors count as not yet); raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s")


def wait_serving(url: str, timeout_s: float = 180) -> None:
    """Return once ``url`` answers a one-sentence ``/v1/embeddings`` with 200."""

    def answers() -> bool:
        return httpx.post(f"{url}/v1/embeddings", json={"input": "warm up"}, timeout=30).status_code == 200

    wait_for(answers, timeout_s, f"{url} serving")
