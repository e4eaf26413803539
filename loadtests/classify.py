"""Locust load for ``POST /v1/classify`` (classifier packages).

    locust -f loadtests/classify.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/classify.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s

Options as for ``loadtests/embeddings.py`` (``--inputs``, ``--model``, ``--rate``, ``--payload``, ``--header``,
``--api-key``; each defaults to its ``OPTISERVE_*`` variable).
A response counts as a failure unless it is 200 and holds one classification per input.
"""

from __future__ import annotations

from locust import FastHttpUser, task

import loadtests.options  # noqa: F401  # registers the command-line options
from loadtests.payloads import EmbeddingsPayloads, LoadOptions, paced_wait


class ClassifyUser(FastHttpUser):
    wait_time = paced_wait

    def on_start(self) -> None:
        self.load_options = LoadOptions.current(self.environment.parsed_options)
        self.payloads = EmbeddingsPayloads.from_options(self.load_options)
        self.headers = self.load_options.request_headers()

    @task
    def classify(self) -> None:
        body, count = self.payloads.next()
        with self.client.post("/v1/classify", data=body, headers=self.headers, catch_response=True) as response:  # type: ignore[arg-type]  # bytes are fine
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := (response.text or "").count('"object":"classification"')) != count:
                response.failure(f"sent {count} inputs, got {got} classifications")
