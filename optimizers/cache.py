"""Content-addressed cache of pass outputs.

A step's key is the sha256 of: the input artifact's content hash, the pass name and version, its config, the versions of
the libraries the pass uses, the device, and (for passes whose output depends on it) the fidelity budget. A
rerun of an unchanged recipe finds every step here. Each entry records the sha256 of its output; an entry whose
files no longer match is discarded and recomputed (never served).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from modelpkg import settings
from modelpkg.hashing import sha256_file, sha256_tree

log = logging.getLogger(__name__)
ENTRY_FILE = "entry.json"


def default_cache_dir() -> Path:
    return Path(settings.CACHE.get() or Path.home() / ".cache" / "optiserve" / "chain")


def content_hash(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def data_fingerprint(*splits: list[Any]) -> str:
    """sha256 over the items of the splits a pass may read (texts, or arrays), in order: a pass run on other data
    (``--data``, a larger corpus) never reuses an output made from this data."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(f"split:{len(split)}".encode())
        for item in split:
            data = item.encode("utf-8") if isinstance(item, str) else np.ascontiguousarray(item).tobytes()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def step_key(
    input_hash: str,
    pass_name: str,
    pass_version: int,
    config: dict[str, Any],
    libraries: dict[str, str],
    device: str,
    budget: dict[str, Any] | None,
    data: str = "",
) -> str:
    material = {
        "input": input_hash,
        "data": data,
        "pass": pass_name,
        "pass_version": pass_version,
        "config": config,
        "libraries": libraries,
        "device": device,
        "budget": budget,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    directory: Path
    output: Path  # the artifact (file or directory) inside ``directory``
    meta: dict[str, Any]


class StepCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()
        self._sweep_abandoned()

    def _sweep_abandoned(self) -> None:
        """Remove staging directories of processes that died mid-step (their entries were never committed)."""
        import psutil

        for staging in (self.root / "staging").glob("*-*"):
            pid = staging.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> CacheEntry | None:
        directory = self._dir(key)
        try:
            meta = json.loads((directory / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return None
        output = directory / meta["output"]
        if not output.exists() or content_hash(output) != meta["output_sha256"]:
            log.warning("cache entry %s was modified after it was written; discarding and recomputing", key[:12])
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return CacheEntry(directory, output, meta)

    def staging(self, key: str) -> Path:
        """A fresh directory to run the step in; :meth:`commit` moves it into place."""
        staging = self.root / "staging" / f"{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, key: str, staging: Path, output: Path, meta: dict[str, Any]) -> CacheEntry:
        """Keep only ``output`` from ``staging``, record its hash, and move the entry into place atomically."""
        relative = output.relative_to(staging)
        for leftover in staging.iterdir():
            if leftover.name != relative.parts[0]:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        record = {**meta, "output": relative.as_posix(), "output_sha256": content_hash(output)}
        (staging / ENTRY_FILE).write_text(json.dumps(record, indent=2, default=str))
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return CacheEntry(final, final / relative, record)
