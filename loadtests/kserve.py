"""Locust load for KServe v2 / Open Inference Protocol ``POST /v2/models/{model}/infer`` (JSON tensors).

    locust -f loadtests/kserve.py --host http://127.0.0.1:8000 --model all-MiniLM-L6-v2

Options as for ``loadtests/embeddings.py``; ``--model`` / ``OPTISERVE_MODEL`` names the model (default: the first
one ``GET /v1/models`` lists). A response counts as a failure unless it is 200 and its first output has one row per
input.
"""

from __future__ import annotations

import orjson
from locust import task

from loadtests.user import OptiserveUser

SETUP = "/v1/models (setup)"  # the runner leaves requests named "... (setup)" out of the summary


def output_rows(body: bytes) -> int:
    """Rows of the first output tensor of a KServe v2 answer."""
    outputs = orjson.loads(body or b"{}").get("outputs") or [{}]
    return int((outputs[0].get("shape") or [0])[0])


class KServeUser(OptiserveUser):
    def on_start(self) -> None:
        super().on_start()
        model = self.payloads.model
        if model is None:
            listed = self.client.get("/v1/models", name=SETUP, headers=self.headers).json()
            model = listed["data"][0]["id"]
        self.path = f"/v2/models/{model}/infer"

    @task
    def infer(self) -> None:
        body, count = self.payloads.next_kserve()
        self.post_checked(self.path, body, count, output_rows, "output rows", name="/v2/models/{model}/infer")
