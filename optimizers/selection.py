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
from optimizers.recipe import Recipe
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


def select(candidates: list[Candidate], budget: FidelityBudget) -> Candidate | None:
    """The fastest servable candidate whose fidelity is within budget; among those within ``SPEED_TIE`` of the
    fastest, the most faithful (plain PyTorch ``module`` models are references only: packages never carry model
    code)."""
    admitted = [
        c
        for c in candidates
        if c.fidelity and admits(budget, c.fidelity) and c.artifact and c.artifact.format != "module"
    ]
    if not admitted:
        return None
    fastest = max(c.items_per_s for c in admitted)
    close = [c for c in admitted if c.items_per_s >= fastest * (1 - SPEED_TIE)]
    return max(close, key=lambda c: (fidelity_score(c.fidelity), c.items_per_s))


def budget_not_met(candidates: list[Candidate], budget: FidelityBudget, report_dir: Path) -> BudgetNotMetError:
    """The error for a run where no candidate qualifies, naming the closest (the source where nothing else was
    built) and the limits it breaks."""
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
        "serving": serving.model_dump() if serving else None,
        "pareto_front": [c.name for c in candidates if c.pareto],
        "candidates": [c.summary(budget) for c in candidates],
    }
