"""optiserve command line: the one place that sees the optimizer chain, the server and the load tests."""

from serving.version import __version__

__all__ = ["__version__"]
