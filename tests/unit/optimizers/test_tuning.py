"""Optuna search over a recipe candidate's alternatives: a bounded number of trials, the budget as a hard
constraint, the trials in the report, and every trial's model judged by the chain like any candidate."""

from __future__ import annotations

import pytest

from modelpkg.manifest import Fidelity, FidelityBudget
from optimizers.chain import optimize
from optimizers.recipe import Recipe, RecipeError, load_plan, plan
from optimizers.tuning import budget_violation

pytest.importorskip("optuna", reason="optuna is not installed")

SEARCHED = {
    "name": "int8",
    "steps": [
        {"pass": "export_onnx"},
        {
            "pass": "quantize_dynamic",
            "config": {"accuracy_aware": False},
            "search": {"per_channel": [False, True], "op_types": [["MatMul"], ["MatMul", "Gemm"]]},
        },
    ],
}


def _recipe(sampler: str, trials: int, budget: dict | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "budget": budget or {},
            "profile": {"items": 32, "max_batch": 4, "min_batches": 2},
            "candidates": [{**SEARCHED, "tune": {"sampler": sampler, "trials": trials, "seed": 1}}],
        }
    )


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_a_tuned_candidate_builds_at_most_its_trials_and_reports_them(tiny_model_dir, tmp_path, sampler) -> None:
    recipe = _recipe(sampler, trials=3)
    assert len(plan(recipe).candidates) == 4  # every combination is planned and validated, few are built
    result = optimize(tiny_model_dir, tmp_path / "pkg", recipe=recipe, cache_dir=tmp_path / "cache")
    (study,) = result.report["tuning"]
    assert study["candidate"] == "int8" and study["sampler"] == sampler and len(study["trials"]) == 3
    built = {c.name for c in result.candidates[1:]}
    assert 1 <= len(built) <= 3 and built == {t["candidate"] for t in study["trials"]}
    assert all(c.fidelity is not None and c.profile for c in result.candidates[1:])  # judged on held-out data
    assert "## Tuning" in (result.package.root / "report.md").read_text()


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
def test_the_budget_is_a_hard_constraint_for_tuning(tiny_model_dir, tmp_path) -> None:
    recipe = _recipe("tpe", trials=2, budget={"max_abs_error": 1e-9})
    with pytest.raises(Exception, match="no candidate meets the fidelity budget"):
        optimize(tiny_model_dir, tmp_path / "pkg", recipe=recipe, cache_dir=tmp_path / "cache")
    report = (tmp_path / "pkg.report" / "report.json").read_text()
    assert '"within_budget": false' in report and '"within_budget": true' not in report


def test_budget_violation_is_zero_inside_and_grows_with_the_gap() -> None:
    budget = FidelityBudget(min_cosine_mean=0.99, min_cosine_min=0.95)
    inside = Fidelity(cosine_mean=0.995, cosine_p1=0.97, cosine_min=0.96, samples=10)
    near = Fidelity(cosine_mean=0.985, cosine_p1=0.97, cosine_min=0.96, samples=10)
    far = Fidelity(cosine_mean=0.90, cosine_p1=0.8, cosine_min=0.7, samples=10)
    assert budget_violation(budget, inside) == 0 < budget_violation(budget, near) < budget_violation(budget, far)
    assert budget_violation(FidelityBudget(max_abs_error=1e-9), inside.model_copy(update={"max_abs_error": 1.0})) > 0


def test_a_bad_tune_block_is_a_recipe_error(tmp_path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("candidates:\n  - name: x\n    tune: {sampler: grid}\n    steps: [{pass: export_onnx}]\n")
    with pytest.raises(RecipeError, match=r"candidates\.0\.tune\.sampler = 'grid'"):
        load_plan(bad)
