"""Runtimes: the code that executes a model on a padded batch, shared by the server and the optimizer chain.

:mod:`modelpkg.runtimes.base` is the interface, :mod:`modelpkg.runtimes.factory` picks and builds one.
"""
