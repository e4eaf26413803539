"""Locust load for ``POST /v1/images/classify`` (image classifier packages): each request carries 1..``--inputs``
image files drawn from a directory, as base64 text.

    locust -f loadtests/images.py --host http://127.0.0.1:8000 --payload my-images/ --headless -u 8 -t 30s

Options as for ``loadtests/embeddings.py`` (``--inputs``, ``--model``, ``--rate``, ``--header``, ``--api-key``);
``--payload`` names the directory of JPEG, PNG or WebP files (required: there is no built-in image set here).
A response counts as a failure unless it is 200 and holds one classification per image.
"""

from __future__ import annotations

from locust import task

from loadtests.user import OptiserveUser


class ImagesUser(OptiserveUser):
    @task
    def classify_images(self) -> None:
        body, count = self.payloads.next()
        self.post_checked("/v1/images/classify", body, count, lambda b: b.count(b'"object":"classification"'), "labels")
