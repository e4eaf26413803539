"""What the command line prints: our own short lines by default, everything with ``-v``, errors and the result
with ``-q``.

By default the libraries optiserve drives are silenced: transformers' load reports and "Loading weights" bars,
Hugging Face Hub progress bars, NNCF's progress bars (rich's console), Python warnings raised inside third-party
code (the torch exporter's ``TracerWarning`` and the like), ONNX Runtime's C++ log below errors, warnings that
third-party loggers send to the root logger (ONNX Runtime's "consider pre-processing" hint), Ray's
token-authentication notice and Ray Serve's driver-side INFO lines. Ray's worker logs stay off unless
``OPTISERVE_RAY_LOGS=1`` (``serving.launcher.start``). ``-v`` leaves every library as it is and shows our DEBUG
lines.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Literal

Verbosity = Literal["quiet", "normal", "verbose"]
OUR_LOGGERS = ("optiserve", "optimizers", "serving", "loadtests")
# Python warnings attributed to any module but ours are ignored (pytest's own filters still apply to ours).
THIRD_PARTY_MODULES = r"(?!(optiserve|optimizers|serving|loadtests)(\.|$))"
# Read when each library is first imported; a value the user set wins. They reach subprocesses too.
LIBRARY_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub, and transformers' "Loading weights" bars
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' LOAD REPORT and advisories
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
RAY_NOTICES = ("ray._private.authentication.authentication_token_setup",)  # "Token authentication is enabled"
VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ShortFormatter(logging.Formatter):
    """``message`` for INFO and below; ``warning: message`` / ``error: message`` above."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _warning_or_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def apply(verbosity: Verbosity) -> None:
    """Configure logging for the command line and, unless ``verbose``, silence the libraries."""
    if verbosity == "verbose":
        logging.basicConfig(level=logging.WARNING, format=VERBOSE_FORMAT)
        for name in OUR_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ShortFormatter("%(message)s"))
    # Third-party loggers inherit the root's ERROR; where the root is set up already (pytest), it is left alone.
    logging.basicConfig(level=logging.ERROR, handlers=[handler])
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbosity == "quiet" else logging.INFO)
    silence_libraries()


def silence_libraries() -> None:
    """Turn off third-party warnings, progress bars and notices in this process (and, by environment, in the
    processes it starts). Safe to call more than once."""
    for name, value in LIBRARY_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", module=THIRD_PARTY_MODULES)
    for name in RAY_NOTICES:
        logging.getLogger(name).setLevel(logging.ERROR)
    serve_logger = logging.getLogger("ray.serve")  # Serve replaces its handlers on import, not its filters
    if _warning_or_above not in serve_logger.filters:
        serve_logger.addFilter(_warning_or_above)
    if "transformers" in sys.modules:  # imported already: the environment above came too late
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    try:
        import rich
    except ImportError:
        pass
    else:
        rich.reconfigure(quiet=True)  # NNCF draws its progress bars on rich's global console
    try:
        import onnxruntime
    except ImportError:
        return
    onnxruntime.set_default_logger_severity(3)  # errors only
