"""What the machine offers a model: the CPU's model name and the ISA features that change which runtime and
precision win (bf16, AMX, VNNI), and the GPU's name where torch sees one.

The chain records this fingerprint in every package it writes, with the features the package relies on; a replica
on a machine that lacks one of them warns and still serves (slower than profiled, or in another precision).
Recipe candidates name the features they need (``requires: [bf16]``) and are skipped, with the reason, where the
machine lacks them.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# A feature is present when the CPU reports any of these flags (names as in /proc/cpuinfo).
FEATURES: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "amx": ("amx_tile",),
    "fp16": ("avx512_fp16",),
}
# The flags worth recording: everything FEATURES reads, plus AMX's int8 unit.
RECORDED_FLAGS = tuple(sorted({flag for flags in FEATURES.values() for flag in flags} | {"amx_int8"}))


class HardwareProfile(BaseModel):
    """The machine a package was profiled on (recorded in its manifest) or is served on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_model: str
    cpu_flags: list[str] = Field(default=[], description="the ISA flags among RECORDED_FLAGS this CPU reports")
    cpu_count: int = Field(default=0, ge=0)
    gpu: str | None = Field(default=None, description="name of GPU 0 where the chain ran on CUDA")

    @property
    def features(self) -> list[str]:
        flags = set(self.cpu_flags)
        return [name for name, wanted in FEATURES.items() if flags.intersection(wanted)]

    def has(self, feature: str) -> bool:
        if feature == "cuda":
            return self.gpu is not None
        if feature not in FEATURES:
            raise ValueError(f"unknown hardware feature {feature!r}; known: {', '.join([*FEATURES, 'cuda'])}")
        return bool(set(self.cpu_flags).intersection(FEATURES[feature]))

    def describe(self) -> str:
        features = ", ".join(self.features) or "none of " + "/".join(FEATURES)
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu_model} ({self.cpu_count} cores; {features}){gpu}"


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """CPU model name and flags from Linux's /proc/cpuinfo (elsewhere: the platform's processor string, no flags)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", set()
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.machine() or "unknown CPU", flags


@cache
def detect(gpu: str | None = None) -> HardwareProfile:
    """This machine's profile; ``gpu`` names the GPU the caller runs on (the chain passes it with ``--device
    cuda``; this module never initialises CUDA itself)."""
    import os

    model, flags = _cpuinfo()
    return HardwareProfile(
        cpu_model=model,
        cpu_flags=sorted(flags.intersection(RECORDED_FLAGS)),
        cpu_count=os.cpu_count() or 0,
        gpu=gpu,
    )


def int8_saturates() -> bool:
    """Whether this CPU's int8 kernels sum pairs of u8 x s8 products into a saturating int16 (``vpmaddubsw``, x86
    without VNNI), where ONNX Runtime advises 7-bit weights (``reduce_range``). Measured on an AVX2 EPYC:
    benchmarks/results/int8_saturation.md."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") and not detect().has("vnni")


def missing_features(required: list[str], here: HardwareProfile) -> list[str]:
    """The features in ``required`` this machine lacks (``cuda`` counts as present only with a GPU)."""
    return [feature for feature in required if not here.has(feature)]


def serving_mismatch(required: list[str], profiled_on: HardwareProfile | None, here: HardwareProfile) -> str | None:
    """A warning when this machine lacks a feature the package relies on (None when it has them all)."""
    lacking = missing_features(required, here)
    if not lacking:
        return None
    origin = f" on {profiled_on.describe()}" if profiled_on else ""
    return (
        f"this package was profiled{origin} and relies on {', '.join(lacking)}, which this machine "
        f"({here.describe()}) lacks: it will still serve, but slower than its profile says"
    )
