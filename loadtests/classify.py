"""Locust load for ``POST /v1/classify`` (classifier packages).

    locust -f loadtests/classify.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/classify.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s

Options as for ``loadtests/embeddings.py`` (``--inputs``, ``--model``, ``--rate``, ``--payload``, ``--header``,
``--api-key``; each defaults to its ``OPTISERVE_*`` variable).
A response counts as a failure unless it is 200 and holds one classification per input.
"""

from __future__ import annotations

from locust import task

from loadtests.user import OptiserveUser


class ClassifyUser(OptiserveUser):
    @task
    def classify(self) -> None:
        body, count = self.payloads.next()
        self.post_checked("/v1/classify", body, count, lambda b: b.count(b'"object":"classification"'), "labels")
