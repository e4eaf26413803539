"""optiserve serving: the Ray Serve application and its protocols (OpenAI, KServe v2, rerank), batching,
admission, metrics, the launcher and the control plane for deploys.

It imports the core (:mod:`modelpkg`: packages, runtimes, settings, errors) and never ``optimizers``,
``loadtests`` or ``optiserve``.
"""
