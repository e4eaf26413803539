"""The Locust files' own command-line options, shown by ``locust --help`` and in Locust's web UI; each defaults to
its ``OPTISERVE_*`` variable (``loadtests/settings.py``), which ``optiserve loadtest`` sets for every Locust process.

    locust -f loadtests/embeddings.py --host http://127.0.0.1:8000 --inputs 4 --api-key KEY --payload my.txt

Imported by the Locust files only (importing Locust patches the process with gevent)."""

from __future__ import annotations

from typing import Any

from locust import events

from loadtests import settings


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """Every option here is ``include_in_web_ui`` (Locust's default for custom arguments); the key is masked."""
    parser.add_argument(
        "--inputs",
        type=int,
        default=settings.INPUTS.get(),
        help=settings.INPUTS.help("each request carries 1..N inputs"),
    )
    parser.add_argument("--model", default=settings.MODEL.get(), help=settings.MODEL.help("model name to send"))
    parser.add_argument(
        "--payload",
        default=settings.PAYLOAD.get(),
        help=settings.PAYLOAD.help("inputs file: .txt one per line, or .jsonl with a text field (default: corpus)"),
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[line for line in settings.HEADERS.get().splitlines() if line.strip()],
        help=settings.HEADERS.help("extra request header 'Name: value' (repeatable)"),
    )
    parser.add_argument(
        "--api-key",
        default=settings.API_KEY.get(),
        is_secret=True,
        help=settings.API_KEY.help("sent as 'Authorization: Bearer KEY'"),
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=settings.RATE.get(),
        help=settings.RATE.help("target requests/s over all users (0: closed loop)"),
    )
    parser.add_argument(
        "--rate-per-user",
        type=float,
        default=settings.RATE_PER_USER.get(),
        help=settings.RATE_PER_USER.help("target requests/s per user (wins over --rate)"),
    )
    parser.add_argument("--seed", type=int, default=settings.SEED.get(), help=settings.SEED.help("payload seed"))
