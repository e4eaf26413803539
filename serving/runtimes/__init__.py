"""Runtimes: the code that executes a model on a padded batch. Shared by the server and the optimizer chain."""

from serving.runtimes.base import ModelRuntime, load_runtime

__all__ = ["ModelRuntime", "load_runtime"]
