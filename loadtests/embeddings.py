"""Locust load for the OpenAI-compatible ``POST /v1/embeddings``.

    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s --inputs 4

Options (``locust --help``, and in the web UI; each defaults to its variable): ``--inputs N`` / ``OPTISERVE_INPUTS``
(each request carries 1..N inputs, default 1), ``--model`` / ``OPTISERVE_MODEL``, ``--rate`` / ``OPTISERVE_RATE``
(target requests/s over all users; default: closed loop), ``--payload FILE`` / ``OPTISERVE_PAYLOAD`` (your inputs;
default: the held-out corpus), ``--header 'Name: value'`` / ``OPTISERVE_HEADERS`` and ``--api-key`` /
``OPTISERVE_API_KEY`` (see ``loadtests/options.py``). Add a shape file for a load shape:
``-f loadtests/embeddings.py,loadtests/shape_step.py`` (see ``loadtests/shapes.py``).
A response counts as a failure unless it is 200 and holds one embedding per input.
"""

from __future__ import annotations

from locust import FastHttpUser, task

import loadtests.options  # noqa: F401  # registers the command-line options
from loadtests.payloads import EmbeddingsPayloads, LoadOptions, paced_wait


class EmbeddingsUser(FastHttpUser):
    wait_time = paced_wait  # closed loop (next request as soon as the last returns) unless a rate is set

    def on_start(self) -> None:
        self.load_options = LoadOptions.current(self.environment.parsed_options)
        self.payloads = EmbeddingsPayloads.from_options(self.load_options)
        self.headers = self.load_options.request_headers()

    @task
    def embed(self) -> None:
        body, count = self.payloads.next()
        with self.client.post("/v1/embeddings", data=body, headers=self.headers, catch_response=True) as response:  # type: ignore[arg-type]  # bytes are fine
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif (got := (response.text or "").count('"object":"embedding"')) != count:
                response.failure(f"sent {count} inputs, got {got} embeddings")
