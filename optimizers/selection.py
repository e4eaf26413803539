"""The choice made from a chain run's candidates (:mod:`optimizers.candidate`): the Pareto front over throughput
and fidelity, the selection of the fastest candidate within the fidelity budget, the report's record of every
candidate, and :class:`BudgetNotMetError` naming the closest candidate where none qualifies. Fidelity is compared
through ``optimizers.fidelity.fidelity_score`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpkg.errors import OptiserveError
from modelpkg.hardware import HardwareProfile
from modelpkg.manifest import FidelityBudget, ServingDefaults
from optimizers.budget import admits, violations
from optimizers.candidate import Candidate
from optimizers.fidelity import fidelity_score
from optimizers.recipe import Recipe, SelectionSpec
from optimizers.source import SourceModel

SPEED_TIE = 0.05  # throughputs closer than this are within a profile's noise: fidelity decides between them


class BudgetNotMetError(OptiserveError):
    """No candidate reached the fidelity budget. The report was still written; ``candidates`` holds them all."""

    def __init__(self, message: str, candidates: list[Candidate] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


def mark_pareto(candidates: list[Candidate]) -> None:
    """A candidate is on the front if no other is at least as fast and as faithful, and better in one."""
    built = [c for c in candidates if c.fidelity is not None]
    for c in built:
        c.pareto = not any(
            o is not c
            and o.items_per_s >= c.items_per_s
            and fidelity_score(o.fidelity) >= fidelity_score(c.fidelity)
            and (o.items_per_s > c.items_per_s or fidelity_score(o.fidelity) > fidelity_score(c.fidelity))
            for o in built
        )


def speed(candidate: Candidate, rank_by: str) -> float:
    """The number a recipe ranks by, higher is faster: items/s as served (at the candidate's replica layout on
    this machine's cores; the best single-thread profile row where that was not measured), or the inverse of the
    single-input p50."""
    if rank_by == "latency":
        return 1.0 / candidate.single_p50_ms if candidate.single_p50_ms else 0.0
    served = candidate.served_items_per_s
    return served if served is not None else candidate.items_per_s


def admitted(
    candidates: list[Candidate], budget: FidelityBudget, selection: SelectionSpec | None = None
) -> list[Candidate]:
    """The candidates a package may be made of: within the fidelity budget, servable (plain PyTorch ``module``
    models are references only: packages never carry model code) and within ``selection``'s latency cap."""
    limit = (selection or SelectionSpec()).max_single_p50_ms
    return [
        c
        for c in candidates
        if c.fidelity
        and admits(budget, c.fidelity)
        and c.artifact
        and c.artifact.format != "module"
        and (limit is None or (c.single_p50_ms is not None and c.single_p50_ms <= limit))
    ]


def select(
    candidates: list[Candidate], budget: FidelityBudget, selection: SelectionSpec | None = None
) -> Candidate | None:
    """The fastest servable candidate whose fidelity is within budget (by ``selection.rank_by``: throughput, or the
    single-input p50; ``selection.max_single_p50_ms`` rules out candidates slower than that alone); among those
    within ``SPEED_TIE`` of the fastest, the most faithful (plain PyTorch ``module`` models are references only:
    packages never carry model code)."""
    selection = selection or SelectionSpec()
    eligible = admitted(candidates, budget, selection)
    if not eligible:
        return None
    fastest = max(speed(c, selection.rank_by) for c in eligible)
    close = [c for c in eligible if speed(c, selection.rank_by) >= fastest * (1 - SPEED_TIE)]
    return max(close, key=lambda c: (fidelity_score(c.fidelity), speed(c, selection.rank_by)))


def budget_not_met(
    candidates: list[Candidate], budget: FidelityBudget, report_dir: Path, selection: SelectionSpec | None = None
) -> BudgetNotMetError:
    """The error for a run where no candidate qualifies, naming the closest (the source where nothing else was
    built) and the limits it breaks; or, where some are within budget but too slow alone, the quickest of those."""
    limit = selection.max_single_p50_ms if selection else None
    within = [c for c in candidates if c.fidelity and admits(budget, c.fidelity) and c.single_p50_ms is not None]
    if within and limit is not None:
        quickest = min(within, key=lambda c: c.single_p50_ms or 0.0)
        return BudgetNotMetError(
            f"no candidate within the fidelity budget runs one input within max_single_p50_ms {limit:g} ms; "
            f"quickest: {quickest.name} ({quickest.single_p50_ms:.1f} ms); report written to {report_dir}",
            candidates,
        )
    built = [c for c in candidates[1:] if c.fidelity] or candidates[:1]
    closest = max(built, key=lambda c: fidelity_score(c.fidelity))
    broken = "; ".join(violations(budget, closest.fidelity)) if closest.fidelity else closest.reason
    return BudgetNotMetError(
        f"no candidate meets the fidelity budget {budget.model_dump(exclude_none=True)}; closest: "
        f"{closest.name} ({broken}); report written to {report_dir}",
        candidates,
    )


def build_report(
    source: SourceModel,
    recipe: Recipe,
    budget: FidelityBudget,
    candidates: list[Candidate],
    selected: Candidate | None,
    data: dict[str, Any],
    serving: ServingDefaults | None,
    hardware: HardwareProfile,
) -> dict[str, Any]:
    return {
        "source": {"name": source.name, "path": str(source.path), "sha256": source.sha256, "format": source.format},
        "task": source.task,
        "recipe": recipe.name,
        "budget": budget.model_dump(exclude_none=True),
        "heldout_samples": data["splits"]["heldout"],
        "data": data,
        "hardware": {**hardware.model_dump(), "features": hardware.features},
        "selected": selected.name if selected else None,
        "selection": recipe.selection.model_dump(),
        "serving": serving.model_dump() if serving else None,
        "pareto_front": [c.name for c in candidates if c.pareto],
        "candidates": [c.summary(budget) for c in candidates],
    }
