"""Locust load for ``POST /v1/classify`` (classifier packages).

    locust -f loadtests/classify.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/classify.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s

Environment as for ``loadtests/embeddings.py`` (``OPTISERVE_INPUTS``, ``OPTISERVE_MODEL``, ``OPTISERVE_RATE``).
A response counts as a failure unless it is 200 and holds one classification per input.
"""

from __future__ import annotations

from locust import FastHttpUser, task

from loadtests.payloads import EmbeddingsPayloads, paced_wait

HEADERS = {"Content-Type": "application/json"}


class ClassifyUser(FastHttpUser):
    wait_time = paced_wait

    def on_start(self) -> None:
        self.payloads = EmbeddingsPayloads.from_env()

    @task
    def classify(self) -> None:
        body, count = self.payloads.next()
        with self.client.post("/v1/classify", data=body, headers=HEADERS, catch_response=True) as response:  # type: ignore[arg-type]  # bytes are fine
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := (response.text or "").count('"object":"classification"')) != count:
                response.failure(f"sent {count} inputs, got {got} classifications")
