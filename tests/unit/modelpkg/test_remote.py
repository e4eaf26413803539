"""Packages at a URI (modelpkg/remote.py): published to and fetched from a local S3-compatible server and a plain
HTTP server, once per cache, verified, and refused in one line when a file does not match its manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelpkg.errors import PackageError
from modelpkg.package import MANIFEST_NAME, load_package, read_manifest
from modelpkg.remote import publish, resolve, shown
from optimizers.candidate import Candidate
from optimizers.packaging import write_candidate_package
from optimizers.passes.base import Artifact
from optimizers.source import SourceModel
from tests.support.stores import BUCKET, http_store, s3_put, s3_store


@pytest.fixture
def package_dir(tiny_source: SourceModel, tmp_path: Path) -> Path:
    candidate = Candidate("torch-fp32", Artifact(tiny_source.path, "hf"), chain=[])
    return write_candidate_package(tiny_source, candidate, tmp_path / "pkg").root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("OPTISERVE_PACKAGE_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    with s3_store() as env:
        yield env


def _model_file(package: Path) -> str:
    return next(e.path for e in read_manifest(package).files if e.path.endswith((".safetensors", ".onnx", ".bin")))


def test_a_package_published_to_s3_is_fetched_once_and_verified(package_dir, cache, s3) -> None:
    uri = f"s3://{BUCKET}/minilm/v1"
    publish(package_dir, uri)
    local = resolve(uri)
    assert local.parent == cache and load_package(uri).manifest == load_package(package_dir).manifest
    # a second load is a cache hit: the store's model file could be gone and nothing is fetched again
    s3_put(f"minilm/v1/{_model_file(package_dir)}", b"")
    assert resolve(uri) == local and load_package(uri).root == local


def test_a_tampered_remote_file_is_refused_in_one_line(package_dir, cache, s3) -> None:
    uri = f"s3://{BUCKET}/tampered"
    publish(package_dir, uri)
    model = _model_file(package_dir)
    s3_put(f"tampered/{model}", (package_dir / model).read_bytes()[:-1] + b"!")
    with pytest.raises(PackageError) as refused:
        resolve(uri)
    message = str(refused.value)
    assert (
        "\n" not in message
        and message.startswith(f"{uri} does not verify: the package was modified")
        and f"{model!r} fails" in message
    )
    assert list(cache.iterdir()) == []  # nothing half-fetched is kept


def test_a_cached_copy_changed_on_disk_is_refused_at_load(package_dir, cache, s3) -> None:
    uri = f"s3://{BUCKET}/cached"
    publish(package_dir, uri)
    local = resolve(uri)
    model = local / _model_file(package_dir)
    model.write_bytes(model.read_bytes()[:-1] + b"!")
    with pytest.raises(PackageError, match="fails its sha256"):
        load_package(uri)


def test_a_package_over_plain_http_and_one_line_errors(package_dir, cache, tmp_path) -> None:
    shutil.copytree(package_dir, tmp_path / "site" / "pkg")
    with http_store(tmp_path / "site") as base:
        assert load_package(f"{base}/pkg").manifest.name == read_manifest(package_dir).name
        with pytest.raises(PackageError, match=f"{base}/missing is not a model package: {MANIFEST_NAME} not found"):
            resolve(f"{base}/missing")
        with pytest.raises(PackageError, match="published to s3:// or gs://"):
            publish(package_dir, f"{base}/up")


def test_credentials_in_a_uri_are_never_shown() -> None:
    assert shown("https://user:secret@example.com/pkg") == "https://example.com/pkg"
    assert shown("s3://bucket/pkg") == "s3://bucket/pkg"
