"""Load tests: Locust files (usable as-is with ``locust -f``) and the headless runner behind ``optiserve loadtest``."""
