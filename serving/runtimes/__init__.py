"""Runtimes: the code that executes a model on a padded batch. Shared by the server and the optimizer chain."""

from serving.runtimes.base import ModelRuntime
from serving.runtimes.factory import create_runtime, load_runtime

__all__ = ["ModelRuntime", "create_runtime", "load_runtime"]
