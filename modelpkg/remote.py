"""Model packages at a URI: ``s3://`` (and S3-compatible stores), ``gs://``, ``http(s)://``, or a local path.

A remote package is fetched once per node into a content-addressed cache (``OPTISERVE_PACKAGE_CACHE``): its
directory is named by the sha256 of the package's ``manifest.json``, which records every file's sha256, so one
name is one content. Only the files the manifest lists are fetched (no listing is needed, so a plain HTTP server
serves a package), each to a path confined to the package, into a staging directory that is verified whole and
then renamed into place: replicas on one node that fetch at once each finish with the same complete copy, and a
half-fetched package is never in the cache. Whoever loads it verifies every file again
(:func:`modelpkg.package.load_package`), cache hit or not.

Credentials and endpoints come from where each store's own library looks (fsspec with s3fs / gcsfs): for S3 the
``AWS_*`` variables (``AWS_ENDPOINT_URL`` for S3-compatible stores), shared config files, instance profiles; for
GCS the application-default credentials. Nothing secret is taken on a command line, and a URI's user and password
are never printed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelpkg import settings
from modelpkg.errors import PackageError
from modelpkg.package import MANIFEST_NAME, confined, load_package, read_manifest

REMOTE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
EXTRAS = {"s3fs": "optiserve[s3]", "gcsfs": "optiserve[gcs]", "aiohttp": "aiohttp"}


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is a URI of a store optiserve fetches from (not a local path)."""
    return isinstance(location, str) and urlsplit(location).scheme.lower() in REMOTE_SCHEMES


def location(value: str | Path) -> str | Path:
    """A package's location as a command line gives it: a URI kept as written, anything else a path."""
    return str(value) if is_remote(str(value)) else Path(value)


def normalized(value: str | Path) -> str:
    """A location to record and compare: a URI as it is, a path made absolute."""
    return str(value) if is_remote(str(value)) else str(Path(value).resolve())


def shown(uri: str) -> str:
    """``uri`` without its user and password, to print."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.hostname or "")) if parts.username or parts.password else uri


def cache_root() -> Path:
    return Path(settings.PACKAGE_CACHE.get()).expanduser()


def _filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``uri`` and the package's root path in it (no trailing slash)."""
    import fsspec

    scheme = urlsplit(uri).scheme.lower()
    try:
        # a fresh filesystem each time: fsspec's instance cache would keep an endpoint or credentials from before
        fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True)
    except ImportError:
        library = REMOTE_SCHEMES[scheme]
        raise PackageError(
            f"{shown(uri)}: reading {scheme}:// needs {library} (pip install {EXTRAS[library]})"
        ) from None
    root = uri.rstrip("/") if scheme in ("http", "https") else path.rstrip("/")
    return fs, root


def _read(fs: Any, path: str, uri: str) -> bytes:
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        raise PackageError(f"{shown(uri)} is not a model package: {MANIFEST_NAME} not found") from None
    except Exception as exc:  # noqa: BLE001 -- any store error becomes one line naming the URI
        raise PackageError(f"{shown(uri)}: cannot read {MANIFEST_NAME} ({type(exc).__name__}: {exc})") from None
    return data


def resolve(location: str | Path) -> Path:
    """The local directory of the package at ``location``: a local path as it is; for a URI, its copy in the node's
    cache, fetched first if the cache does not hold it. Raises :class:`PackageError` in one line (unreachable
    store, missing manifest, a file that fails its sha256)."""
    if not is_remote(location):
        return Path(location)
    uri = str(location)
    fs, root = _filesystem(uri)
    manifest_bytes = _read(fs, f"{root}/{MANIFEST_NAME}", uri)
    target = cache_root() / hashlib.sha256(manifest_bytes).hexdigest()
    if not (target / MANIFEST_NAME).is_file():
        _fetch(fs, root, uri, manifest_bytes, target)
    return target


def _fetch(fs: Any, root: str, uri: str, manifest_bytes: bytes, target: Path) -> None:
    """Fetch the listed files into a staging directory beside ``target``, verify it whole, rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        for entry in read_manifest(staging).files:
            local = confined(staging, entry.path)  # before anything is written: no path leaves the package
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{root}/{entry.path}", str(local))
            except Exception as exc:  # noqa: BLE001 -- one line naming the file and the URI
                raise PackageError(f"{shown(uri)}: cannot fetch {entry.path!r} ({type(exc).__name__})") from None
        try:
            load_package(staging)
        except PackageError as exc:
            reason = str(exc).replace(f"package {staging}", "the package").replace(str(staging), "the package")
            raise PackageError(f"{shown(uri)} does not verify: {reason}") from None
        try:
            staging.rename(target)
        except OSError:  # another process on this node finished the same package first: keep its copy
            if not (target / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(package_dir: Path, uri: str) -> None:
    """Upload a verified package to ``uri`` (``s3://`` or ``gs://``): its files first, ``manifest.json`` last, so
    a reader never finds a manifest whose files are not there yet."""
    package = load_package(package_dir)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        raise PackageError(f"{shown(uri)}: packages are published to s3:// or gs://, read from any of them")
    fs, root = _filesystem(uri)
    try:
        for entry in package.manifest.files:
            fs.put_file(str(confined(package.root, entry.path)), f"{root}/{entry.path}")
        fs.put_file(str(package.root / MANIFEST_NAME), f"{root}/{MANIFEST_NAME}")
    except Exception as exc:  # noqa: BLE001 -- one line naming the URI
        raise PackageError(f"cannot publish to {shown(uri)} ({type(exc).__name__}: {exc})") from None
