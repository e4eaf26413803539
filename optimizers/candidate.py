"""One candidate of a chain run: its artifact, pass records, status, fidelity and profile, and its record in the
report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelpkg.manifest import Fidelity, FidelityBudget, PassRecord, ProfileRow
from optimizers.budget import admits, violations
from optimizers.passes.base import Artifact
from optimizers.profile import best_row

Status = Literal["ok", "skipped", "failed"]

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
    single_p50_ms: float | None = None  # one input run alone (warm), the median over a held-out sample
    evaluate_s: float | None = None  # seconds its fidelity and profile took (optimizers.evaluate)
    # as served on this machine (within budget, 2+ cores): items/s of one replica with a thread per core and of
    # single-thread replicas, one per core, and which is faster (optimizers.profile.replica_layout)
    layout: dict[str, Any] | None = None

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

    @property
    def served_items_per_s(self) -> float | None:
        """Items/s at its replica layout on all this machine's cores (None where it was not measured)."""
        if self.layout is None:
            return None
        return max(self.layout["threads_items_per_s"], self.layout["replicas_items_per_s"])

    def summary(self, budget: FidelityBudget) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "runtime": self.runtime,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "items_per_s": self.items_per_s,
            "single_p50_ms": self.single_p50_ms,
            "served_items_per_s": self.served_items_per_s,
            "layout": self.layout,
            "evaluate_s": self.evaluate_s,
            "within_budget": bool(self.fidelity and admits(budget, self.fidelity)),
            "violations": violations(budget, self.fidelity) if self.fidelity else [],
            "pareto": self.pareto,
            "fidelity": self.fidelity.model_dump(exclude_none=True) if self.fidelity else None,
            "profile": [row.model_dump() for row in self.profile],
            "chain": [record.model_dump() for record in self.chain],
        }
