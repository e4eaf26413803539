"""Locust load for the OpenAI-compatible ``POST /v1/embeddings``.

    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s

Environment: ``OPTISERVE_INPUTS`` (each request carries 1..N sentences, default 1), ``OPTISERVE_MODEL``,
``OPTISERVE_RATE`` (target requests/s over all users; default: closed loop). Add a shape file for a load shape:
``-f loadtests/embeddings.py,loadtests/shape_step.py`` (see ``loadtests/shapes.py``).
A response counts as a failure unless it is 200 and holds one embedding per input.
"""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.payloads import EmbeddingsPayloads, paced_wait

HEADERS = {"Content-Type": "application/json"}


class EmbeddingsUser(FastHttpUser):
    wait_time = paced_wait  # closed loop (next request as soon as the last returns) unless OPTISERVE_RATE is set

    def on_start(self) -> None:
        self.payloads = EmbeddingsPayloads.from_env()

    @task
    def embed(self) -> None:
        body, count = self.payloads.next()
        with self.client.post("/v1/embeddings", data=body, headers=HEADERS, catch_response=True) as response:  # type: ignore[arg-type]  # bytes are fine
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := (response.text or "").count('"object":"embedding"')) != count:
                response.failure(f"sent {count} inputs, got {got} embeddings")
