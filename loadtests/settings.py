"""The load tests' ``OPTISERVE_*`` variables (read by the Locust files; ``optiserve loadtest`` sets them from its
flags), declared with the core's :func:`modelpkg.settings.declare` so that ``docs/limits.md``'s table holds them."""

from __future__ import annotations

from modelpkg.settings import declare, flag, integer, number, text

INPUTS = declare("OPTISERVE_INPUTS", integer(1), 1, "each request carries 1..N inputs", "loadtest")
MODEL = declare("OPTISERVE_MODEL", text, "", "model name sent with each request (unset: none)", "loadtest")
SEED = declare("OPTISERVE_SEED", integer(), 0, "base seed of the payload draw", "loadtest")
PAYLOAD = declare(
    "OPTISERVE_PAYLOAD",
    text,
    "",
    "inputs file: .txt one per line, or .jsonl with a text field; a directory: its image files (unset: the "
    "held-out corpus)",
    "loadtest",
)
HEADERS = declare(
    "OPTISERVE_HEADERS", text, "", "extra request headers, 'Name: value' one per line (unset: none)", "loadtest"
)
API_KEY = declare(
    "OPTISERVE_API_KEY",
    text,
    "",
    "sent as 'Authorization: Bearer KEY' (a token-protected server; unset: none)",
    "loadtest",
)
RATE = declare(
    "OPTISERVE_RATE", number(at_least=0), 0.0, "target requests/s over all users (0: closed loop)", "loadtest"
)
RATE_PER_USER = declare(
    "OPTISERVE_RATE_PER_USER",
    number(at_least=0),
    0.0,
    "target requests/s per user (wins over OPTISERVE_RATE; 0: unset)",
    "loadtest",
)
STAGES = declare("OPTISERVE_STAGES", text, "1:10,2:10,4:10", "step shape: users:seconds per stage", "loadtest")
RAMP = declare("OPTISERVE_RAMP", text, "1:16:60", "ramp shape: from users, to users, over seconds", "loadtest")
SPIKE = declare(
    "OPTISERVE_SPIKE",
    text,
    "2:16:20:10:20",
    "spike shape: base, spike users; seconds before, during, after",
    "loadtest",
)
SWEEP_USERS = declare("OPTISERVE_SWEEP_USERS", text, "1,2,4,8", "sweep shape: user counts, in order", "loadtest")
SWEEP_WINDOW_S = declare("OPTISERVE_SWEEP_WINDOW_S", number(above=0), 3.0, "sweep: window seconds", "loadtest")
SWEEP_STABLE_WINDOWS = declare(
    "OPTISERVE_SWEEP_STABLE_WINDOWS", integer(1), 3, "sweep: consecutive windows that must agree", "loadtest"
)
SWEEP_TOLERANCE = declare(
    "OPTISERVE_SWEEP_TOLERANCE", number(above=0), 0.1, "sweep: how closely the windows agree (relative)", "loadtest"
)
SWEEP_MAX_STEP_S = declare(
    "OPTISERVE_SWEEP_MAX_STEP_S", number(above=0), 30.0, "sweep: seconds a step may last at most", "loadtest"
)
SWEEP_OUT = declare("OPTISERVE_SWEEP_OUT", text, "sweep.json", "sweep: where the steps are written", "loadtest")
SWEEP_SERVER_METRICS = declare(
    "OPTISERVE_SWEEP_SERVER_METRICS", flag, True, "sweep: 1 reads the server's optiserve /metrics, 0 not", "loadtest"
)
