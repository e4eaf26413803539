"""Read the server's Prometheus metrics and summarize what changed between two scrapes."""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str, timeout_s: float = 10.0) -> dict[Sample, float]:
    """All samples at ``url`` (e.g. http://127.0.0.1:8000/metrics), keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@dataclass(frozen=True)
class HistogramDelta:
    """Observations a histogram gained between two scrapes (summed over label sets)."""

    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ascending
    count: float
    total: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def quantile(self, q: float) -> float:
        """Linear interpolation within buckets, as Prometheus's ``histogram_quantile``."""
        if not self.count:
            return float("nan")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = cumulative - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 0.0)
            lower_bound, lower_count = bound, cumulative
        return lower_bound

    def distribution(self) -> list[tuple[str, float]]:
        """Non-cumulative counts per bucket, as (label, count), skipping empty buckets."""
        out, previous, lower = [], 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative - previous > 0:
                label = f"<= {bound:g}" if not math.isinf(bound) else f"> {lower:g}"
                out.append((label, cumulative - previous))
            previous, lower = cumulative, bound
        return out


def histogram_delta(
    before: dict[Sample, float], after: dict[Sample, float], name: str, match: dict[str, str] | None = None
) -> HistogramDelta:
    match = match or {}
    buckets: dict[float, float] = defaultdict(float)
    count = total = 0.0
    for (sample, labels), value in after.items():
        label_map = dict(labels)
        if any(label_map.get(k) != v for k, v in match.items()):
            continue
        gained = value - before.get((sample, labels), 0.0)
        if sample == f"{name}_bucket":
            buckets[float(label_map["le"])] += gained
        elif sample == f"{name}_count":
            count += gained
        elif sample == f"{name}_sum":
            total += gained
    return HistogramDelta(sorted(buckets.items()), count, total)


def counter_delta(
    before: dict[Sample, float], after: dict[Sample, float], name: str, match: dict[str, str] | None = None
) -> dict[tuple[tuple[str, str], ...], float]:
    """Gain of each label set of counter ``name`` (``_total`` sample)."""
    match = match or {}
    out = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_total" and all(dict(labels).get(k) == v for k, v in match.items()):
            out[labels] = value - before.get((sample, labels), 0.0)
    return out


def requests_by_code(
    before: dict[Sample, float], after: dict[Sample, float], route: str | None = None
) -> dict[str, float]:
    """Requests the server answered between two scrapes, by HTTP status code (optionally for one route)."""
    totals: dict[str, float] = defaultdict(float)
    match = {"route": route} if route else None
    for labels, gained in counter_delta(before, after, "optiserve_requests", match).items():
        if gained:
            totals[dict(labels)["code"]] += gained
    return dict(totals)
