"""What every optiserve Locust user shares: its options (``loadtests/flags.py``), the payloads drawn from them,
the request headers, the pacing, and the check of each answer (a 200 holding one result per input)."""

from __future__ import annotations

from collections.abc import Callable

from locust import FastHttpUser

import loadtests.options  # noqa: F401  # registers the command-line options
from loadtests.payloads import EmbeddingsPayloads, LoadOptions, paced_wait


class OptiserveUser(FastHttpUser):
    """Base of the route users; a subclass adds its ``@task``."""

    abstract = True
    wait_time = paced_wait  # closed loop (next request as soon as the last returns) unless a rate is set

    def on_start(self) -> None:
        self.load_options = LoadOptions.current(self.environment.parsed_options)
        self.payloads = EmbeddingsPayloads.from_options(self.load_options)
        self.headers = self.load_options.request_headers()

    def post_checked(
        self, path: str, body: bytes, expected: int, counted: Callable[[bytes], int], what: str, name: str | None = None
    ) -> None:
        """POST ``body`` and fail the request unless it answers 200 with ``expected`` results (``counted``)."""
        with self.client.post(
            path,
            data=body,  # type: ignore[arg-type]  # bytes are fine
            headers=self.headers,
            catch_response=True,
            name=name,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := counted(response.content or b"")) != expected:
                response.failure(f"sent {expected} inputs, got {got} {what}")
