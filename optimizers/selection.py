"""The footprint of a chain run and the choice made from it: each :class:`Candidate` (its artifact, pass
records, status, fidelity and profile), the budget check, the Pareto front over throughput and fidelity, the
selection of the fastest candidate within the fidelity budget, the report's record of every candidate, and
:class:`BudgetNotMetError` naming the closest candidate where none qualifies. Fidelity is compared through
``optimizers.fidelity.fidelity_score`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from optimizers.fidelity import fidelity_score
from optimizers.passes.base import Artifact
from optimizers.profile import best_row
from optimizers.recipe import Recipe
from optimizers.source import SourceModel
from serving.errors import OptiserveError
from serving.hardware import HardwareProfile
from serving.package import Fidelity, FidelityBudget, PassRecord, ProfileRow, ServingDefaults

Status = Literal["ok", "skipped", "failed"]
SPEED_TIE = 0.05  # throughputs closer than this are within a profile's noise: fidelity decides between them


class BudgetNotMetError(OptiserveError):
    """No candidate reached the fidelity budget. The report was still written; ``candidates`` holds them all."""

    def __init__(self, message: str, candidates: list[Candidate] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


# What a model directory's size on disk counts: weights and graphs (safetensors; OpenVINO IR .xml + .bin), not
# tokenizer or config files.
MODEL_FILE_SUFFIXES = frozenset({".safetensors", ".bin", ".xml", ".onnx"})


@dataclass
class Candidate:
    name: str
    artifact: Artifact | None
    chain: list[PassRecord]
    status: Status = "ok"
    reason: str = ""
    fidelity: Fidelity | None = None
    profile: list[ProfileRow] = field(default_factory=list)
    pareto: bool = False

    @property
    def runtime(self) -> str:
        return self.artifact.runtime if self.artifact else "-"

    @property
    def precision(self) -> str:
        return self.artifact.precision if self.artifact else "-"

    @property
    def model_path(self) -> Path:
        assert self.artifact is not None
        return self.artifact.path

    @property
    def size_bytes(self) -> int:
        if self.artifact is None:
            return 0
        path = self.artifact.path
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in MODEL_FILE_SUFFIXES)

    @property
    def items_per_s(self) -> float:
        return best_row(self.profile).items_per_s if self.profile else 0.0

    def summary(self, budget: FidelityBudget) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "runtime": self.runtime,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "items_per_s": self.items_per_s,
            "within_budget": bool(self.fidelity and budget.admits(self.fidelity)),
            "violations": budget.violations(self.fidelity) if self.fidelity else [],
            "pareto": self.pareto,
            "fidelity": self.fidelity.model_dump(exclude_none=True) if self.fidelity else None,
            "profile": [row.model_dump() for row in self.profile],
            "chain": [record.model_dump() for record in self.chain],
        }


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
        if c.fidelity and budget.admits(c.fidelity) and c.artifact and c.artifact.format != "module"
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
    violations = "; ".join(budget.violations(closest.fidelity)) if closest.fidelity else closest.reason
    return BudgetNotMetError(
        f"no candidate meets the fidelity budget {budget.model_dump(exclude_none=True)}; closest: "
        f"{closest.name} ({violations}); report written to {report_dir}",
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
