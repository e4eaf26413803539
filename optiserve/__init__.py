"""optiserve command line: the one place that sees the optimizer chain, the server and the load tests."""

__version__ = "0.1.0"
