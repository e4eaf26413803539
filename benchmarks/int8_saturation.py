"""int8 fidelity with 8-bit and 7-bit weights, on this CPU, in one run.

    .venv/bin/python benchmarks/int8_saturation.py [--families]

x86 CPUs without VNNI multiply int8 as pairs of u8 x s8 products summed into a saturating int16 (``vpmaddubsw``);
quantizers can keep weights to 7 bits there (ONNX Runtime's ``reduce_range``, NNCF's overflow fix on every layer).
optiserve's ONNX Runtime passes do so by themselves on such CPUs (``modelpkg.hardware.int8_saturates``); its NNCF
pass keeps NNCF's default (the first layer only) unless ``overflow_fix: enable`` is set. This script quantizes the
bundled MiniLM-L6 (and, with ``--families``, the tiny random-weight encoders of
tests/unit/optimizers/test_families.py) with dynamic and static int8 (ONNX Runtime) and NNCF int8 (OpenVINO),
each both ways, as configured (no accuracy search), and prints each candidate's mean cosine to the source on the
held-out split. Writes benchmarks/results/int8_saturation.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corpus import load_split  # noqa: E402
from modelpkg.hardware import detect, int8_saturates  # noqa: E402
from optimizers.chain import optimize  # noqa: E402
from optimizers.source import bundled_model_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "int8_saturation.md"
RECIPE = """name: int8-saturation
profile: {{items: 8, max_batch: 4}}
budget: {{min_cosine_mean: 0.0, min_cosine_min: -1.0}}
candidates:
  - name: int8-dynamic
    steps: [{{pass: export_onnx}}, {{pass: quantize_dynamic, config: {{accuracy_aware: false, reduce_range: {seven}}}}}]
  - name: int8-static
    steps:
      - {{pass: export_onnx}}
      - {{pass: quantize_static, config: {{accuracy_aware: false, calibration_samples: 64, reduce_range: {seven}}}}}
  - name: openvino-int8
    steps:
      - {{pass: export_onnx}}
      - {{pass: openvino}}
      - {{pass: nncf_quantize, config: {{accuracy_control: false, subset_size: 64, overflow_fix: {fix}}}}}
"""
CANDIDATES = ("int8-dynamic", "int8-static", "openvino-int8")


def cosines(model: Path, work: Path, data: Path | None) -> dict[str, tuple[float, float]]:
    """Mean cosine to the source of each candidate: (8-bit weights, 7-bit weights)."""
    found: dict[str, list[float]] = {}
    for seven, fix in ((False, "first_layer_only"), (True, "enable")):
        recipe = work / f"recipe-{seven}.yaml"
        recipe.write_text(RECIPE.format(seven=str(seven).lower(), fix=fix))
        result = optimize(
            model, work / f"{model.name}-{seven}", recipe=recipe, data_file=data, cache_dir=work / "cache"
        )
        for candidate in result.candidates:
            if candidate.name in CANDIDATES and candidate.fidelity is not None:
                found.setdefault(candidate.name, []).append(candidate.fidelity.cosine_mean)
    return {name: (values[0], values[1]) for name, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", action="store_true", help="also the tiny random-weight encoders of the tests")
    args = parser.parse_args()
    hardware = detect()
    work = Path(tempfile.mkdtemp(prefix="int8-saturation-"))
    models = {"all-MiniLM-L6-v2 (bundled)": (bundled_model_dir(), None)}
    if args.families:
        from tests._families import build_family
        from tests.test_families import FAMILY_POOLING, PROMPTS

        data = work / "texts.txt"
        data.write_text("\n".join(load_split("train")[:300]) + "\n")
        for family in FAMILY_POOLING:
            root = build_family(family, work / family, pooling=FAMILY_POOLING[family], prompts=PROMPTS)
            models[f"tiny random-weight {family}"] = (root, data)
    lines = [
        "# int8 with 8-bit and 7-bit weights",
        "",
        f"CPU: {hardware.describe()}; ISA flags: {', '.join(hardware.cpu_flags) or 'none recorded'}; "
        f"optiserve's ONNX Runtime passes default here to {'7-bit' if int8_saturates() else '8-bit'} weights.",
        "",
        "    .venv/bin/python benchmarks/int8_saturation.py" + (" --families" if args.families else ""),
        "",
        "Mean cosine to the source on the held-out split, 8-bit → 7-bit weights (ONNX Runtime `reduce_range`; NNCF",
        "`overflow_fix` first layer only → every layer).",
        "",
        "| model | " + " | ".join(CANDIDATES) + " |",
        "|---|" + "---|" * len(CANDIDATES),
    ]
    for label, (model, data) in models.items():
        found = cosines(model, work, data)
        cells = [f"{found[c][0]:.4f} → {found[c][1]:.4f}" if c in found else "n/a" for c in CANDIDATES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
