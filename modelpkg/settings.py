"""Every ``OPTISERVE_*`` environment variable, declared once: name, type, default and what it does.

This is the only module that reads them (as Starlette's ``Config`` is for Starlette): code asks a
:class:`Setting` for its value, and a bad value is an error that names the variable and what it takes. The
table in ``docs/limits.md`` is checked against :data:`SETTINGS` by ``tests/unit/test_docs.py``, and every flag of the
command line that a variable backs names it in ``--help``.

It imports nothing heavy: the load tests declare their own variables with :func:`declare`
(``loadtests/settings.py``), so Locust processes read them without the server or the optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelpkg.errors import OptiserveError

T = TypeVar("T")


class SettingError(OptiserveError, ValueError):
    """An environment variable holds a value its setting does not take; the message names both."""


def integer(minimum: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return value

    return cast


def number(above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if (above is not None and not value > above) or (at_least is not None and not value >= at_least):
            raise ValueError(f"must be a number {'> ' + str(above) if above is not None else '>= ' + str(at_least)}")
        return value

    return cast


def one_of(*choices: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw

    return cast


def flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return raw == "1"


def text(raw: str) -> str:
    return raw


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: unset or empty means ``default``."""

    name: str
    cast: Callable[[str], T]
    default: T
    doc: str
    group: str

    def get(self, env: Mapping[str, str] | None = None) -> T:
        raw = (os.environ if env is None else env).get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            return self.cast(raw.strip())
        except ValueError as exc:
            raise SettingError(f"{self.name}={raw!r}: {exc}") from None

    def is_set(self, env: Mapping[str, str] | None = None) -> bool:
        return bool((os.environ if env is None else env).get(self.name, "").strip())

    @property
    def shown_default(self) -> str:
        """The default as it is written in the environment (``1`` for a true flag)."""
        return str(int(self.default)) if isinstance(self.default, bool) else str(self.default)

    def help(self, text: str) -> str:
        """A command-line flag's help naming this variable, as TEI's ``[env: …]``."""
        return f"{text} [env: {self.name}]"


SETTINGS: dict[str, Setting] = {}


def declare(name: str, cast: Callable[[str], T], default: T, doc: str, group: str) -> Setting[T]:
    setting = Setting(name, cast, default, doc, group)
    SETTINGS[name] = setting
    return setting


# -- the server (read by every replica; `optiserve serve` forwards them) ----------------------------------------
MAX_BODY_BYTES = declare(
    "OPTISERVE_MAX_BODY_BYTES", integer(1), 16 * 1024 * 1024, "request body limit (413 past it)", "server"
)
MAX_INPUTS = declare("OPTISERVE_MAX_INPUTS", integer(1), 2048, "inputs per request (413 past it)", "server")
MAX_IMAGE_PIXELS = declare(
    "OPTISERVE_MAX_IMAGE_PIXELS",
    integer(1),
    40_000_000,
    "image models: pixels (width x height) an image may declare, checked before it is decoded (413 past it)",
    "server",
)
IMAGE_DECODE_TIMEOUT_S = declare(
    "OPTISERVE_IMAGE_DECODE_TIMEOUT_S",
    number(above=0),
    10.0,
    "image models: seconds one request's images may take to decode and resize (413 past it)",
    "server",
)
ACCESS_LOG = declare(
    "OPTISERVE_ACCESS_LOG",
    flag,
    False,
    "1: Ray Serve writes an access-log line per request in each replica's log (off: optiserve_requests_total "
    "counts every request, and the line costs replica CPU at high request rates)",
    "server",
)
BODY_TIMEOUT_S = declare(
    "OPTISERVE_BODY_TIMEOUT_S",
    number(above=0),
    10.0,
    "longest time a replica waits for a request's whole body (408 past it)",
    "server",
)
MAX_INPUT_CHARS = declare(
    "OPTISERVE_MAX_INPUT_CHARS", integer(1), 32_768, "characters per input (422 past it)", "server"
)
ON_OVERFLOW = declare(
    "OPTISERVE_ON_OVERFLOW",
    one_of("truncate", "reject"),
    "truncate",
    "inputs over the model's token limit: truncate (flagged) or reject (422)",
    "server",
)
API_TOKEN = declare(
    "OPTISERVE_API_TOKEN", text, "", "bearer token the inference routes require (unset: none)", "server"
)
API_TOKEN_FILE = declare(
    "OPTISERVE_API_TOKEN_FILE", text, "", "file holding that token (wins over OPTISERVE_API_TOKEN)", "server"
)
THREADS = declare(
    "OPTISERVE_THREADS",
    integer(0),
    0,
    "threads per runtime (0: OMP_NUM_THREADS, which Ray sets to a replica's num_cpus, else 1)",
    "server",
)
INGRESS = declare(
    "OPTISERVE_INGRESS",
    one_of("haproxy", "proxy"),
    "haproxy",
    "Ray Serve's ingress: HAProxy or its Python proxy",
    "server",
)
RAY_LOGS = declare("OPTISERVE_RAY_LOGS", flag, False, "1: show Ray's worker logs on the console", "server")
DOCS = declare(
    "OPTISERVE_DOCS",
    one_of("auto", "0", "1"),
    "auto",
    "OpenAPI docs at /docs and /openapi.json: 1 on, 0 off, auto: on when `optiserve serve` binds a loopback address",
    "server",
)
HAPROXY_BINARY = declare(
    "OPTISERVE_HAPROXY_BINARY",
    str,
    "",
    "the haproxy binary serving/haproxy-local runs (set by the launcher; the image sets it for `ray start`)",
    "server",
)
LAUNCHER_SET = declare(
    "OPTISERVE_LAUNCHER_SET",
    str,
    "",
    "set by the launcher, not by operators: the Ray HAProxy variables it chose itself (ports, timeouts) and their "
    "values; a later start from the same environment chooses those still holding them afresh",
    "server",
)
HTTP_REQUEST_TIMEOUT_S = declare(
    "OPTISERVE_HTTP_REQUEST_TIMEOUT_S",
    integer(1),
    10,
    "HAProxy: seconds a client has to send a request's headers and its body's first 16 KiB (408 past it)",
    "server",
)
KEEP_ALIVE_TIMEOUT_S = declare(
    "OPTISERVE_KEEP_ALIVE_TIMEOUT_S",
    integer(1),
    30,
    "HAProxy: seconds an idle client connection stays open between requests",
    "server",
)
HTTP_MAXCONN = declare(
    "OPTISERVE_HTTP_MAXCONN",
    integer(0),
    0,
    "HAProxy: connections the HTTP port holds at once (0: 15/16 of RAY_SERVE_HAPROXY_MAXCONN)",
    "server",
)
HEALTH_PORT = declare(
    "OPTISERVE_HEALTH_PORT",
    integer(0),
    0,
    "HAProxy: a port for the health routes only, still answering when the HTTP port is full (0: none)",
    "server",
)
RAY_EXPOSE = declare(
    "OPTISERVE_RAY_EXPOSE",
    flag,
    False,
    "local Ray: 1: its node address (metrics exporters, gRPC ports) is the machine's; 0: 127.0.0.1",
    "server",
)

PACKAGE_CACHE = declare(
    "OPTISERVE_PACKAGE_CACHE",
    str,
    "~/.cache/optiserve/packages",
    "where packages served from a URI (s3://, gs://, https://) are kept on each node, by content",
    "server",
)
DRAIN_S = declare(
    "OPTISERVE_DRAIN_S",
    number(above=0),
    30.0,
    "stop and upgrade: seconds a replica has to finish the requests it holds before it is stopped",
    "server",
)
DRAIN_GRACE_S = declare(
    "OPTISERVE_DRAIN_GRACE_S",
    number(at_least=0),
    5.0,
    "stop: seconds between reporting not-ready and refusing new requests (load balancers deregister meanwhile)",
    "server",
)

# -- the optimizer -----------------------------------------------------------------------------------------------
CACHE = declare("OPTISERVE_CACHE", text, "", "pass cache directory (unset: ~/.cache/optiserve/chain)", "optimizer")

# -- the test suite ---------------------------------------------------------------------------------------------
FUZZ_REQUESTS = declare(
    "OPTISERVE_FUZZ_REQUESTS",
    integer(1),
    3000,
    "requests of tests/integration/test_fuzz.py's schemathesis run",
    "tests",
)


def table() -> str:
    """The Markdown table of every setting, as docs/limits.md holds it."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for setting in SETTINGS.values():
        default = "unset" if setting.default == "" else f"`{setting.shown_default}`"
        rows.append(f"| `{setting.name}` | {default} | {setting.group}: {setting.doc} |")
    return "\n".join(rows)
