"""Load tests: Locust files (usable as-is with ``locust -f``) and the headless runner behind ``optiserve loadtest``.

They speak HTTP to a server: they import only the core's settings and errors (:mod:`modelpkg`), never
``serving``, ``optimizers`` or ``optiserve``.
"""
