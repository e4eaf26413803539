"""Locust load for ``POST /v1/rerank`` (reranker packages).

    locust -f loadtests/rerank.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s --inputs 16

Options as for ``loadtests/embeddings.py``; ``--inputs`` is the most documents per request (each request ranks
1..N held-out texts against a query made of the first half of the first one's words).
A response counts as a failure unless it is 200 and ranks every document sent.
"""

from __future__ import annotations

from locust import FastHttpUser, task

import loadtests.options  # noqa: F401  # registers the command-line options
from loadtests.payloads import EmbeddingsPayloads, LoadOptions, paced_wait


class RerankUser(FastHttpUser):
    wait_time = paced_wait

    def on_start(self) -> None:
        self.load_options = LoadOptions.current(self.environment.parsed_options)
        self.payloads = EmbeddingsPayloads.from_options(self.load_options)
        self.headers = self.load_options.request_headers()

    @task
    def rerank(self) -> None:
        body, count = self.payloads.next_rerank()
        with self.client.post("/v1/rerank", data=body, headers=self.headers, catch_response=True) as response:  # type: ignore[arg-type]  # bytes are fine
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := (response.text or "").count('"relevance_score"')) != count:
                response.failure(f"sent {count} documents, got {got} ranked")
