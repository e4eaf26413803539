"""A running server serves packages straight from object storage and from plain HTTP: each replica fetches the
package once into its node's content-addressed cache and verifies it before it loads it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline
from modelpkg.remote import publish
from tests.support.stores import BUCKET, http_store, s3_store

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def remote(server, minilm_packages, tiny_optimized, tmp_path_factory) -> Iterator[tuple]:
    """The tiny package published to a local S3 server and put on a local HTTP server, both served at once under
    two names; the session's deployment is restored after."""
    root = tmp_path_factory.mktemp("remote")
    cache = root / "cache"
    previous = os.environ.get("OPTISERVE_PACKAGE_CACHE")
    os.environ["OPTISERVE_PACKAGE_CACHE"] = str(root / "driver-cache")
    shutil.copytree(tiny_optimized.root, root / "site" / "tiny")
    try:
        with s3_store() as aws, http_store(root / "site") as base:
            s3_uri = f"s3://{BUCKET}/tiny/v1"
            publish(tiny_optimized.root, s3_uri)
            env = {**aws, "OPTISERVE_PACKAGE_CACHE": str(cache)}  # as the nodes' environment would hold them
            server.deploy([s3_uri, f"{base}/tiny"], env=env, served_names=["from-s3", "from-http"])
            try:
                yield server, cache
            finally:
                server.deploy(minilm_packages.package.root)
    finally:
        if previous is None:
            os.environ.pop("OPTISERVE_PACKAGE_CACHE", None)
        else:
            os.environ["OPTISERVE_PACKAGE_CACHE"] = previous


def test_packages_from_s3_and_http_answer_as_the_local_package(remote, tiny_optimized) -> None:
    served, cache = remote
    texts = ["served from object storage", "and from a web server"]
    expected = TextPipeline.from_package(load_package(tiny_optimized.root), threads=1).run(texts)[0]
    for name in ("from-s3", "from-http"):
        response = httpx.post(f"{served.url}/v1/embeddings", json={"input": texts, "model": name}, timeout=60)
        assert response.status_code == 200, response.text[:300]
        vectors = np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, expected, atol=1e-4)
    # one content, one cache entry: both URIs hold the same package, fetched once for the node
    (entry,) = cache.iterdir()
    assert len(entry.name) == 64 and load_package(entry).manifest == tiny_optimized.manifest
