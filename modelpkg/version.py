"""optiserve's version, in one place: read from the installed distribution's metadata (pyproject.toml's
``version``), so the server's ``/v2`` metadata, the OpenAPI title and ``optiserve.__version__`` never drift
from the package that was installed; a source tree that was never installed reports ``0+unknown``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optiserve")
except PackageNotFoundError:  # running from a checkout that was not pip-installed
    __version__ = "0+unknown"
