"""Optuna search over a recipe candidate's alternatives (``tune:`` in a recipe), instead of building them all.

Every combination of the candidate's ``search`` values is planned (and validated) up front; a trial picks one
combination per searched key, builds it through the step cache, and measures it quickly: fidelity on the
validation split (the held-out split only judges the winners) and throughput from a short profile. TPE
maximises throughput with the fidelity budget as a hard constraint (Optuna's ``constraints_func``: a trial
outside the budget is never the best); NSGA-II maximises throughput and fidelity together and keeps the front.
The trials' candidates then go through the chain's full evaluation like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelpkg.manifest import Fidelity, FidelityBudget
from optimizers.budget import admits, judging_limits
from optimizers.fidelity import fidelity_score
from optimizers.recipe import PlannedCandidate, TuneSpec

log = logging.getLogger(__name__)


@dataclass
class Trial:
    """One built combination: its planned candidate, what it measured, and what the study was told."""

    planned: PlannedCandidate
    built: Any  # the chain's Candidate
    items_per_s: float = 0.0
    fidelity: Fidelity | None = None
    violation: float = 0.0


@dataclass
class TuningResult:
    group: str
    sampler: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "candidate": self.group,
            "sampler": self.sampler,
            "duration_s": round(self.duration_s, 1),
            "trials": self.trials,
        }


def budget_violation(budget: FidelityBudget, fidelity: Fidelity | None) -> float:
    """How far ``fidelity`` is outside the budget, summed over the broken limits (0 when within)."""
    if fidelity is None:
        return 1.0
    gap = sum(max(0.0, limit - value) for _, value, limit in judging_limits(budget, fidelity))
    return gap if gap > 0 or admits(budget, fidelity) else 1e-6  # other limits broken: infeasible all the same


def _sampler(spec: TuneSpec, budget_constraint: Callable[[Any], list[float]]) -> Any:
    import optuna

    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, constraints_func=budget_constraint)
    startup = max(1, min(4, spec.trials // 2))
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup, constraints_func=budget_constraint)


def tune(
    group: list[PlannedCandidate],
    measure: Callable[[PlannedCandidate], Trial],
    budget: FidelityBudget,
) -> tuple[list[Trial], TuningResult]:
    """Run the study over ``group`` (the planned combinations of one tuned recipe candidate); ``measure`` builds
    and quickly measures one. Returns the trials that built a model, and the study's record for the report."""
    import optuna

    spec = group[0].tune
    assert spec is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = [key for key, _ in group[0].choice]
    # values may be lists (e.g. op types): compare them by their repr
    values = {key: list(dict.fromkeys(repr(dict(p.choice)[key]) for p in group)) for key in keys}
    by_choice = {tuple(repr(dict(p.choice)[key]) for key in keys): p for p in group}
    trials: dict[str, Trial] = {}
    record = TuningResult(group[0].group, spec.sampler)

    def objective(trial: Any) -> Any:
        picked = tuple(values[key][trial.suggest_categorical(key, list(range(len(values[key]))))] for key in keys)
        planned = by_choice[picked]
        if planned.name not in trials:  # a repeated pick costs nothing: the result is reused
            trials[planned.name] = measure(planned)
        result = trials[planned.name]
        trial.set_user_attr("violation", result.violation)
        fidelity = fidelity_score(result.fidelity)
        record.trials.append(
            {
                "number": trial.number,
                "candidate": planned.name,
                "items_per_s": round(result.items_per_s, 1),
                "fidelity": round(fidelity, 5),
                "within_budget": result.violation == 0,
            }
        )
        log.info("tune %s trial %d: %s", record.group, trial.number, record.trials[-1])
        return (result.items_per_s, fidelity) if spec.sampler == "nsga2" else result.items_per_s

    def constraint(frozen: Any) -> list[float]:
        return [float(frozen.user_attrs.get("violation", 1.0))]

    directions: list[Any] = ["maximize", "maximize"] if spec.sampler == "nsga2" else ["maximize"]
    study = optuna.create_study(directions=directions, sampler=_sampler(spec, constraint))
    start = time.perf_counter()
    study.optimize(objective, n_trials=spec.trials, timeout=spec.timeout_s)
    record.duration_s = time.perf_counter() - start
    return [t for t in trials.values() if t.built.artifact is not None], record
