"""The flags that shape what a load test sends, declared once: ``optiserve loadtest`` and the Locust files
(``locust -f loadtests/embeddings.py --help``, Locust's web UI) both add them from here. Each defaults to its
``OPTISERVE_*`` variable (``loadtests/settings.py``) and its help is that variable's description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtests import settings
from modelpkg.settings import Setting


@dataclass(frozen=True)
class RequestFlag:
    flag: str
    setting: Setting[Any]
    kind: Callable[[str], Any] = str
    metavar: str | None = None
    repeatable: bool = False  # one value per use; the variable holds one per line
    secret: bool = False  # masked in Locust's web UI

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def default(self) -> Any:
        value = self.setting.get()
        return [line for line in value.splitlines() if line.strip()] if self.repeatable else value


REQUEST_FLAGS = (
    RequestFlag("--inputs", settings.INPUTS, int, "N"),
    RequestFlag("--model", settings.MODEL, metavar="NAME"),
    RequestFlag("--payload", settings.PAYLOAD, metavar="FILE|DIR"),
    RequestFlag("--header", settings.HEADERS, metavar="'NAME: VALUE'", repeatable=True),
    RequestFlag("--api-key", settings.API_KEY, metavar="KEY", secret=True),
    RequestFlag("--rate", settings.RATE, float, "REQ_PER_S"),
    RequestFlag("--rate-per-user", settings.RATE_PER_USER, float, "REQ_PER_S"),
    RequestFlag("--seed", settings.SEED, int, "N"),
)


def add_request_flags(parser: Any, locust: bool = False) -> None:
    """Add every request flag to an argparse parser (``locust=True``: Locust's, which can mask a secret)."""
    for spec in REQUEST_FLAGS:
        options: dict[str, Any] = {"default": spec.default(), "metavar": spec.metavar}
        options["help"] = spec.setting.help(spec.setting.doc)
        if spec.repeatable:
            options["action"] = "append"
        else:
            options["type"] = spec.kind
        if spec.secret and locust:
            options["is_secret"] = True
        parser.add_argument(spec.flag, **options)
