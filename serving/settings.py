"""Every ``OPTISERVE_*`` environment variable, declared once: name, type, default and what it does.

This is the only module that reads them (as Starlette's ``Config`` is for Starlette): code asks a
:class:`Setting` for its value, and a bad value is an error that names the variable and what it takes. The
table in ``docs/limits.md`` is checked against :data:`SETTINGS` by ``tests/test_docs.py``, and every flag of the
command line that a variable backs names it in ``--help``.

It imports nothing heavy, so Locust processes (``loadtests/``) read their variables here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from serving.errors import OptiserveError

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


def _declare(name: str, cast: Callable[[str], T], default: T, doc: str, group: str) -> Setting[T]:
    setting = Setting(name, cast, default, doc, group)
    SETTINGS[name] = setting
    return setting


# -- the server (read by every replica; `optiserve serve` forwards them) ----------------------------------------
MAX_BODY_BYTES = _declare(
    "OPTISERVE_MAX_BODY_BYTES", integer(1), 16 * 1024 * 1024, "request body limit (413 past it)", "server"
)
MAX_INPUTS = _declare("OPTISERVE_MAX_INPUTS", integer(1), 2048, "inputs per request (413 past it)", "server")
ACCESS_LOG = _declare(
    "OPTISERVE_ACCESS_LOG",
    flag,
    False,
    "1: Ray Serve writes an access-log line per request in each replica's log (off: optiserve_requests_total "
    "counts every request, and the line costs replica CPU at high request rates)",
    "server",
)
BODY_TIMEOUT_S = _declare(
    "OPTISERVE_BODY_TIMEOUT_S",
    number(above=0),
    10.0,
    "longest time a replica waits for a request's whole body (408 past it)",
    "server",
)
MAX_INPUT_CHARS = _declare(
    "OPTISERVE_MAX_INPUT_CHARS", integer(1), 32_768, "characters per input (422 past it)", "server"
)
ON_OVERFLOW = _declare(
    "OPTISERVE_ON_OVERFLOW",
    one_of("truncate", "reject"),
    "truncate",
    "inputs over the model's token limit: truncate (flagged) or reject (422)",
    "server",
)
API_TOKEN = _declare(
    "OPTISERVE_API_TOKEN", text, "", "bearer token the inference routes require (unset: none)", "server"
)
API_TOKEN_FILE = _declare(
    "OPTISERVE_API_TOKEN_FILE", text, "", "file holding that token (wins over OPTISERVE_API_TOKEN)", "server"
)
THREADS = _declare(
    "OPTISERVE_THREADS",
    integer(0),
    0,
    "threads per runtime (0: OMP_NUM_THREADS, which Ray sets to a replica's num_cpus, else 1)",
    "server",
)
INGRESS = _declare(
    "OPTISERVE_INGRESS",
    one_of("haproxy", "proxy"),
    "haproxy",
    "Ray Serve's ingress: HAProxy or its Python proxy",
    "server",
)
RAY_LOGS = _declare("OPTISERVE_RAY_LOGS", flag, False, "1: show Ray's worker logs on the console", "server")
DOCS = _declare(
    "OPTISERVE_DOCS",
    one_of("auto", "0", "1"),
    "auto",
    "OpenAPI docs at /docs and /openapi.json: 1 on, 0 off, auto: on when `optiserve serve` binds a loopback address",
    "server",
)
HAPROXY_BINARY = _declare(
    "OPTISERVE_HAPROXY_BINARY",
    str,
    "",
    "the haproxy binary serving/haproxy-local runs (set by the launcher; the image sets it for `ray start`)",
    "server",
)
LAUNCHER_SET = _declare(
    "OPTISERVE_LAUNCHER_SET",
    str,
    "",
    "set by the launcher, not by operators: the Ray HAProxy variables it chose itself (ports, timeouts) and their "
    "values; a later start from the same environment chooses those still holding them afresh",
    "server",
)
HTTP_REQUEST_TIMEOUT_S = _declare(
    "OPTISERVE_HTTP_REQUEST_TIMEOUT_S",
    integer(1),
    10,
    "HAProxy: seconds a client has to send a request's headers and its body's first 16 KiB (408 past it)",
    "server",
)
KEEP_ALIVE_TIMEOUT_S = _declare(
    "OPTISERVE_KEEP_ALIVE_TIMEOUT_S",
    integer(1),
    30,
    "HAProxy: seconds an idle client connection stays open between requests",
    "server",
)
HTTP_MAXCONN = _declare(
    "OPTISERVE_HTTP_MAXCONN",
    integer(0),
    0,
    "HAProxy: connections the HTTP port holds at once (0: 15/16 of RAY_SERVE_HAPROXY_MAXCONN)",
    "server",
)
HEALTH_PORT = _declare(
    "OPTISERVE_HEALTH_PORT",
    integer(0),
    0,
    "HAProxy: a port for the health routes only, still answering when the HTTP port is full (0: none)",
    "server",
)
RAY_EXPOSE = _declare(
    "OPTISERVE_RAY_EXPOSE",
    flag,
    False,
    "local Ray: 1: its node address (metrics exporters, gRPC ports) is the machine's; 0: 127.0.0.1",
    "server",
)

DRAIN_S = _declare(
    "OPTISERVE_DRAIN_S",
    number(above=0),
    30.0,
    "stop and upgrade: seconds a replica has to finish the requests it holds before it is stopped",
    "server",
)
DRAIN_GRACE_S = _declare(
    "OPTISERVE_DRAIN_GRACE_S",
    number(at_least=0),
    5.0,
    "stop: seconds between reporting not-ready and refusing new requests (load balancers deregister meanwhile)",
    "server",
)

# -- the optimizer -----------------------------------------------------------------------------------------------
CACHE = _declare("OPTISERVE_CACHE", text, "", "pass cache directory (unset: ~/.cache/optiserve/chain)", "optimizer")

# -- load tests (read by the Locust files; `optiserve loadtest` sets them from its flags) -------------------------
INPUTS = _declare("OPTISERVE_INPUTS", integer(1), 1, "each request carries 1..N held-out inputs", "loadtest")
MODEL = _declare("OPTISERVE_MODEL", text, "", "model name sent with each request (unset: none)", "loadtest")
SEED = _declare("OPTISERVE_SEED", integer(), 0, "base seed of the payload draw", "loadtest")
PAYLOAD = _declare(
    "OPTISERVE_PAYLOAD",
    text,
    "",
    "inputs file (.txt one per line, .jsonl text field; unset: held-out corpus)",
    "loadtest",
)
HEADERS = _declare(
    "OPTISERVE_HEADERS", text, "", "extra request headers, 'Name: value' one per line (unset: none)", "loadtest"
)
API_KEY = _declare(
    "OPTISERVE_API_KEY", text, "", "sent as 'Authorization: Bearer KEY' with each request (unset: none)", "loadtest"
)
RATE = _declare(
    "OPTISERVE_RATE", number(at_least=0), 0.0, "target requests/s over all users (0: closed loop)", "loadtest"
)
RATE_PER_USER = _declare(
    "OPTISERVE_RATE_PER_USER",
    number(at_least=0),
    0.0,
    "target requests/s per user (wins over OPTISERVE_RATE; 0: unset)",
    "loadtest",
)
STAGES = _declare("OPTISERVE_STAGES", text, "1:10,2:10,4:10", "step shape: users:seconds per stage", "loadtest")
RAMP = _declare("OPTISERVE_RAMP", text, "1:16:60", "ramp shape: from users, to users, over seconds", "loadtest")
SPIKE = _declare(
    "OPTISERVE_SPIKE",
    text,
    "2:16:20:10:20",
    "spike shape: base, spike users; seconds before, during, after",
    "loadtest",
)
SWEEP_USERS = _declare("OPTISERVE_SWEEP_USERS", text, "1,2,4,8", "sweep shape: user counts, in order", "loadtest")
SWEEP_WINDOW_S = _declare("OPTISERVE_SWEEP_WINDOW_S", number(above=0), 3.0, "sweep: window seconds", "loadtest")
SWEEP_STABLE_WINDOWS = _declare(
    "OPTISERVE_SWEEP_STABLE_WINDOWS", integer(1), 3, "sweep: consecutive windows that must agree", "loadtest"
)
SWEEP_TOLERANCE = _declare(
    "OPTISERVE_SWEEP_TOLERANCE", number(above=0), 0.1, "sweep: how closely the windows agree (relative)", "loadtest"
)
SWEEP_MAX_STEP_S = _declare(
    "OPTISERVE_SWEEP_MAX_STEP_S", number(above=0), 30.0, "sweep: seconds a step may last at most", "loadtest"
)
SWEEP_OUT = _declare("OPTISERVE_SWEEP_OUT", text, "sweep.json", "sweep: where the steps are written", "loadtest")
SWEEP_SERVER_METRICS = _declare(
    "OPTISERVE_SWEEP_SERVER_METRICS", flag, True, "sweep: 1 reads the server's optiserve /metrics, 0 not", "loadtest"
)

# -- the test suite ---------------------------------------------------------------------------------------------
FUZZ_REQUESTS = _declare(
    "OPTISERVE_FUZZ_REQUESTS", integer(1), 3000, "requests of tests/test_fuzz.py's schemathesis run", "tests"
)


def table() -> str:
    """The Markdown table of every setting, as docs/limits.md holds it."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for setting in SETTINGS.values():
        default = "unset" if setting.default == "" else f"`{setting.shown_default}`"
        rows.append(f"| `{setting.name}` | {default} | {setting.group}: {setting.doc} |")
    return "\n".join(rows)
