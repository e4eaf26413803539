"""Runtimes: the code that executes a model on a padded batch. Shared by the server and the optimizer chain."""

from serving.runtimes.base import EmbeddingRuntime, load_runtime

__all__ = ["EmbeddingRuntime", "load_runtime"]
