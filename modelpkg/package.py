"""The model package: a directory with ``manifest.json`` and the files it lists.

The manifest's schema is :mod:`modelpkg.manifest`; this module reads, verifies and writes packages.
A package is self-describing (what model, made how, run with what runtime, served how) and verifiable: the
manifest records the sha256 of every file, and :func:`load_package` refuses a package whose files are missing,
changed, unlisted, outside the directory, or pickled.

Layout written by :func:`write_package`::

    manifest.json
    model.onnx | model/ (config.json, model.safetensors) | model.xml + model.bin (OpenVINO IR)
    tokenizer/tokenizer.json          (text models)
    report.json, report.md, *.png     (optional)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from modelpkg.errors import PackageError
from modelpkg.hashing import sha256_file
from modelpkg.manifest import SCHEMA_VERSION, FileEntry, Manifest

MANIFEST_NAME = "manifest.json"
# Files that can execute code when loaded. A package never carries them.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def model_file(self) -> Path:
        return self.root / self.manifest.model_path


def confined(root: Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``; refuse absolute paths, ``..`` and links that leave the package."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise PackageError(f"package path {relative!r} must be relative and stay inside the package")
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise PackageError(f"package path {relative!r} resolves outside the package ({resolved})")
    return resolved


def _refuse_pickle(relative: str, manifest: Manifest) -> None:
    if relative in manifest.weights_files:  # OpenVINO IR weights: read as raw tensors by the .xml, never unpickled
        return
    if PurePosixPath(relative).suffix.lower() in PICKLE_SUFFIXES:
        raise PackageError(
            f"package file {relative!r} is a pickle-capable format; packages carry only ONNX, safetensors, "
            "JSON and text files"
        )


def _listed_files(root: Path) -> list[str]:
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(f for f in files if f != MANIFEST_NAME)  # only the top-level manifest is exempt


def write_package(root: Path, manifest: Manifest) -> ModelPackage:
    """Hash every file already placed under ``root`` and write ``manifest.json`` beside them."""
    entries = []
    for relative in _listed_files(root):
        _refuse_pickle(relative, manifest)
        path = confined(root, relative)
        entries.append(FileEntry(path=relative, sha256=sha256_file(path), size=path.stat().st_size))
    for required in manifest.required_files:
        if not (root / required).exists():
            raise PackageError(f"package is missing {required!r}, which its manifest names")
    final = manifest.model_copy(update={"files": entries, "schema_version": SCHEMA_VERSION})
    (root / MANIFEST_NAME).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return ModelPackage(root=root, manifest=final)


def load_package(root: Path | str) -> ModelPackage:
    """Read and verify a package (a directory, or a URI: :mod:`modelpkg.remote` fetches it into the node's cache,
    whose copy is verified here like any other). Raises :class:`PackageError` naming the first problem found."""
    local = _local(root)
    manifest = read_manifest(local)
    _verify_files(local, manifest)
    return ModelPackage(root=local, manifest=manifest)


def _local(root: Path | str) -> Path:
    """The directory of the package at ``root``: a URI's cached copy (fetched if missing), else ``root``."""
    from modelpkg.remote import is_remote, resolve

    return resolve(root) if is_remote(root) else Path(root)


def read_manifest(root: Path | str) -> Manifest:
    """A package's manifest (of a directory or a URI), checked against the schema but without hashing its files
    (:func:`load_package` does both). Raises :class:`PackageError`."""
    root = _local(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageError(f"{root} is not a model package: {MANIFEST_NAME} not found")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else None
        raise PackageError(f"{manifest_path}: schema_version {found!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise PackageError(f"{manifest_path} does not match the manifest schema:\n{exc}") from None
    return manifest


def _verify_files(root: Path, manifest: Manifest) -> None:
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        _refuse_pickle(entry.path, manifest)
        path = confined(root, entry.path)
        if not path.is_file():
            raise PackageError(f"package {root} is incomplete: {entry.path!r} is missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise PackageError(f"package {root} was modified after it was written: {entry.path!r} fails its sha256")
    unlisted = sorted(set(_listed_files(root)) - listed)
    if unlisted:
        raise PackageError(f"package {root} holds files its manifest does not list: {unlisted[:5]}")
    for required in manifest.required_files:
        confined(root, required)
        if not any(path == required or path.startswith(required.rstrip("/") + "/") for path in listed):
            raise PackageError(f"package {root}: {required!r} is named by the manifest but not listed in its files")


@contextmanager
def staged_package_dir(final: Path) -> Iterator[Path]:
    """An empty directory beside ``final`` to assemble a package in; on success it replaces ``final`` (which must
    be absent or hold a package), so a half-written package is never at ``final``."""
    if final.exists() and not _is_package(final):
        raise PackageError(f"refusing to replace {final}: it exists and is not a model package")
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = final.with_name(f".{final.name}.previous-{os.getpid()}")
    if final.exists():
        final.rename(previous)
    staging.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def _is_package(path: Path) -> bool:
    try:
        raw = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "schema_version" in raw and "files" in raw


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
