"""Numbers over Locust's response-time buckets (milliseconds, rounded as Locust rounds them -> count), computed
the way Locust computes them, so a report, a load shape and a benchmark quote the same p99 for the same run."""

from __future__ import annotations


def percentile(times: dict[int, int], q: float, count: int | None = None) -> float:
    """Locust's ``calculate_response_time_percentile``: the ``q`` quantile of ``times`` (``count``: the number of
    timed requests, default the buckets' total); NaN when nothing was timed."""
    total = sum(times.values()) if count is None else count
    if not total:
        return float("nan")
    wanted, seen = int(total * q), 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if total - seen <= wanted:
            return float(ms)
    return 0.0
