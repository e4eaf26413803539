"""Running passes: one pass on one artifact through the content-addressed step cache (:class:`StepRunner`, whose
key holds the input's content hash, the pass, its config and library versions, the device, the budget where the
pass reads it, and a fingerprint of the data it may read), and a planned candidate's whole chain of passes from
the source (:func:`build_candidate`), which turns a pass that cannot run here or failed into a skipped or failed
candidate instead of an error.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelpkg.hardware import HardwareProfile, missing_features
from modelpkg.manifest import PassRecord
from optimizers.cache import StepCache, content_hash, data_fingerprint, library_versions, step_key
from optimizers.candidate import Candidate
from optimizers.passes.base import Artifact, PassContext, PassFailedError, PassUnavailableError, get_pass
from optimizers.recipe import PlannedCandidate, Step
from optimizers.source import SourceModel

log = logging.getLogger(__name__)


def source_artifact(source: SourceModel) -> Artifact:
    """The artifact every candidate's chain starts from: the source model as loaded, fp32."""
    return Artifact(source.model_path, source.format, "fp32")


class StepRunner:
    """Runs one pass on one artifact through the cache."""

    def __init__(self, context: PassContext, cache: StepCache) -> None:
        self.context = context
        self.cache = cache
        self._hashes: dict[Path, str] = {}
        self._data = data_fingerprint(context.train, context.validation, context.calibration)

    def _hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = content_hash(path)
        return self._hashes[path]

    def run(self, step: Step, artifact: Artifact) -> tuple[Artifact, PassRecord]:
        spec = get_pass(step.pass_name)
        config = step.config.model_dump(mode="json")
        budget = self.context.budget.model_dump() if spec.uses_budget else None
        key = step_key(
            self._hash(artifact.path),
            spec.name,
            spec.version,
            config,
            library_versions(spec.libraries),
            self.context.device,
            budget,
            self._data,
        )
        entry = self.cache.get(key)
        cached = entry is not None
        if entry is None:
            log.info("%-16s running", spec.name)
            staging = self.cache.staging(key)
            start = time.perf_counter()
            try:
                output = spec.run(artifact, step.config, replace(self.context, out_dir=staging))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            meta: dict[str, Any] = {
                "pass": spec.name,
                "config": config,
                "format": output.artifact.format,
                "precision": output.artifact.precision,
                "options": output.artifact.options,
                "duration_s": time.perf_counter() - start,
                "details": output.details,
            }
            entry = self.cache.commit(key, staging, output.artifact.path, meta)
        meta = entry.meta
        log.info("%-16s %s (%.1f s)", spec.name, "cached" if cached else "ran", meta["duration_s"])
        record = PassRecord(
            name=spec.name, config=config, duration_s=meta["duration_s"], details=meta["details"], cached=cached
        )
        return Artifact(entry.output, meta["format"], meta["precision"], meta.get("options", {})), record


def build_candidate(
    planned: PlannedCandidate, source: SourceModel, runner: StepRunner, hardware: HardwareProfile
) -> Candidate:
    if lacking := missing_features(list(planned.requires), hardware):
        return Candidate(planned.name, None, [], "skipped", f"needs {', '.join(lacking)}; {hardware.describe()}")
    artifact, records = source_artifact(source), []
    log.info("candidate %s: %s", planned.name, " -> ".join(step.pass_name for step in planned.steps))
    try:
        for step in planned.steps:
            started = time.perf_counter()
            artifact, record = runner.run(step, artifact)
            records.append(record)
    except PassUnavailableError as exc:
        return Candidate(planned.name, None, records, "skipped", f"{step.pass_name}: {exc}")
    except PassFailedError as exc:
        record = PassRecord(
            name=step.pass_name,
            config=step.config.model_dump(mode="json"),
            duration_s=time.perf_counter() - started,  # what the failed pass cost ("Where the time went")
            details=exc.details,
        )
        return Candidate(planned.name, None, [*records, record], "failed", str(exc))
    return Candidate(planned.name, artifact, records)


def tuned_groups(planned: Sequence[PlannedCandidate]) -> list[list[PlannedCandidate]]:
    """The planned combinations of each recipe candidate that is searched with Optuna, grouped."""
    groups: dict[str, list[PlannedCandidate]] = {}
    for p in planned:
        if p.tune is not None:
            groups.setdefault(p.group, []).append(p)
    return list(groups.values())
