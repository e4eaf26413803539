"""Registers the request flags (``loadtests/flags.py``) with Locust, shown by ``locust --help`` and in its web UI;
each defaults to its ``OPTISERVE_*`` variable, which ``optiserve loadtest`` sets for every Locust process.

    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000 --inputs 4 --api-key KEY --payload my.txt

Imported by the Locust files only (importing Locust patches the process with gevent)."""

from __future__ import annotations

from typing import Any

from locust import events

from loadtests.flags import add_request_flags


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """Every option here is ``include_in_web_ui`` (Locust's default for custom arguments); the key is masked."""
    add_request_flags(parser, locust=True)
