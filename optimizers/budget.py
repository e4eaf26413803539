"""Judging a candidate's fidelity against the user's budget (the manifest records both; judging is the
optimizer's). Embedding models are judged by cosine, classifiers by top-1 agreement with the source model,
rerankers by the agreement of their rankings; ``Fidelity.judged_by`` names the numbers for each."""

from __future__ import annotations

from modelpkg.manifest import Fidelity, FidelityBudget


def admits(budget: FidelityBudget, fidelity: Fidelity) -> bool:
    return not violations(budget, fidelity)


def judging_limits(budget: FidelityBudget, fidelity: Fidelity) -> list[tuple[str, float, float]]:
    """(name, value, lower limit) of each number that judges ``fidelity`` (``Fidelity.judged_by``) and that
    ``budget`` limits (the optional limits, such as ``min_recall_at_10``, only when set)."""
    limits = [(name, getattr(fidelity, name), getattr(budget, f"min_{name}")) for name in fidelity.judged_by]
    return [(name, value, limit) for name, value, limit in limits if limit is not None]


def violations(budget: FidelityBudget, fidelity: Fidelity) -> list[str]:
    """Each limit ``fidelity`` breaks, as text (empty when within budget)."""
    checks: list[tuple[str, float | None, float | None, bool]] = [  # name, value, limit, higher is better
        (name, value, limit, True) for name, value, limit in judging_limits(budget, fidelity)
    ]
    # measured for embeddings only (None, so not checked, for classifiers)
    checks.append(("nn_agreement_at10", fidelity.nn_agreement_at10, budget.min_nn_agreement_at10, True))
    checks.append(("labelled_accuracy", fidelity.labelled_accuracy, budget.min_labelled_accuracy, True))
    checks.append(("max_abs_error", fidelity.max_abs_error, budget.max_abs_error, False))
    checks.append(("batch_invariance", fidelity.batch_invariance, budget.min_batch_invariance, True))
    broken = []
    for name, value, limit, higher in checks:
        if limit is None or value is None:
            continue
        if (value < limit) if higher else (value > limit):
            digits = 5 if name == "batch_invariance" else 4  # its limit sits at 0.9999
            broken.append(f"{name} {value:.{digits}f} {'<' if higher else '>'} {limit}")
    return broken
