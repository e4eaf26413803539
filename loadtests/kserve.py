"""Locust load for KServe v2 / Open Inference Protocol ``POST /v2/models/{model}/infer`` (JSON tensors).

    locust -f loadtests/kserve.py --host http://127.0.0.1:8000 --model all-MiniLM-L6-v2

Options as for ``loadtests/embeddings.py``; ``--model`` / ``OPTISERVE_MODEL`` names the model (default: the first
one ``GET /v1/models`` lists). A response counts as a failure unless it is 200 and its first output has one row per
input.
"""

from __future__ import annotations

import orjson
from locust import FastHttpUser, task

import loadtests.options  # noqa: F401  # registers the command-line options
from loadtests.payloads import EmbeddingsPayloads, LoadOptions, paced_wait

SETUP = "/v1/models (setup)"  # the runner leaves requests named "... (setup)" out of the summary


class KServeUser(FastHttpUser):
    wait_time = paced_wait

    def on_start(self) -> None:
        self.load_options = LoadOptions.current(self.environment.parsed_options)
        self.payloads = EmbeddingsPayloads.from_options(self.load_options)
        self.headers = self.load_options.request_headers()
        model = self.payloads.model
        if model is None:
            listed = self.client.get("/v1/models", name=SETUP, headers=self.headers).json()
            model = listed["data"][0]["id"]
        self.path = f"/v2/models/{model}/infer"

    @task
    def infer(self) -> None:
        body, count = self.payloads.next_kserve()
        with self.client.post(
            self.path,
            data=body,  # type: ignore[arg-type]  # bytes are fine
            headers=self.headers,
            catch_response=True,
            name="/v2/models/{model}/infer",
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            outputs = orjson.loads(response.content or b"{}").get("outputs") or [{}]
            if (outputs[0].get("shape") or [0])[0] != count:
                response.failure(f"sent {count} inputs, got output shape {outputs[0].get('shape')}")
