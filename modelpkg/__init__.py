"""optiserve's core: the model-package contract and what runs a package.

The manifest schema (:mod:`modelpkg.manifest`), package I/O and integrity (:mod:`modelpkg.package`), settings,
errors, hardware detection, hashing, the tokenizer, the text/tensor pipeline and the runtimes. The optimizer
(``optimizers/``) writes packages with it, the server (``serving/``) runs them with it.

This package imports only third-party libraries and itself: never ``serving``, ``optimizers``, ``loadtests`` or
``optiserve`` (``tests/unit/test_layering.py``).
"""
