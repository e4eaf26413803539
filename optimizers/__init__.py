"""optiserve optimizers: the chain of passes that turns a source model into a model package.

It imports the core (:mod:`modelpkg`) and never ``serving``, ``loadtests`` or ``optiserve``. Importing this
package is cheap: torch, ONNX and ONNX Runtime are imported by the modules that use them.
"""
