"""The CLI's exit codes: distinct, so scripts can tell a typo from a missed target."""

OK = 0  # done, and every target held
ERROR = 1  # a runtime problem: a file, the network, a server that did not answer, a failed step
USAGE = 2  # the command line is wrong (argparse uses 2 as well)
UNMET = 3  # it ran, but a target was missed: fidelity budget, SLO, error-rate limit, sweep knee not found
