"""Locust load for the OpenAI-compatible ``POST /v1/embeddings``.

    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000            # web UI
    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000 --headless -u 8 -t 30s --inputs 4

Options (``locust --help``, and in the web UI; each defaults to its variable): ``--inputs N`` / ``OPTISERVE_INPUTS``
(each request carries 1..N inputs, default 1), ``--model`` / ``OPTISERVE_MODEL``, ``--rate`` / ``OPTISERVE_RATE``
(target requests/s over all users; default: closed loop), ``--payload FILE`` / ``OPTISERVE_PAYLOAD`` (your inputs;
default: the held-out corpus), ``--header 'Name: value'`` / ``OPTISERVE_HEADERS`` and ``--api-key`` /
``OPTISERVE_API_KEY`` (see ``loadtests/flags.py``). Add a shape file for a load shape:
``-f loadtests/embeddings.py,loadtests/shape_step.py`` (see ``loadtests/shapes.py``).
A response counts as a failure unless it is 200 and holds one embedding per input.
"""

from __future__ import annotations

from locust import task

from loadtests.user import OptiserveUser


class EmbeddingsUser(OptiserveUser):
    @task
    def embed(self) -> None:
        body, count = self.payloads.next()
        self.post_checked("/v1/embeddings", body, count, lambda b: b.count(b'"object":"embedding"'), "embeddings")
