"""Locust load for ``POST /v1/rerank`` (reranker packages).

    locust -f loadtests/rerank.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s --inputs 16

Options as for ``loadtests/embeddings.py``; ``--inputs`` is the most documents per request (each request ranks
1..N held-out texts against a query made of the first half of the first one's words).
A response counts as a failure unless it is 200 and ranks every document sent.
"""

from __future__ import annotations

from locust import task

from loadtests.user import OptiserveUser


class RerankUser(OptiserveUser):
    @task
    def rerank(self) -> None:
        body, count = self.payloads.next_rerank()
        self.post_checked("/v1/rerank", body, count, lambda b: b.count(b'"relevance_score"'), "ranked documents")
