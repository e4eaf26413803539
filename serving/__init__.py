"""optiserve serving: model packages, runtimes, and the Ray Serve application.

This package reads model packages; it never imports :mod:`optimizers`.
"""
