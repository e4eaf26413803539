"""optiserve command line: the one place that imports the optimizer chain, the server and the load tests (and the
core they share, :mod:`modelpkg`)."""

from modelpkg.version import __version__

__all__ = ["__version__"]
