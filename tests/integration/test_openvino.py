"""OpenVINO conversion and NNCF int8 on the tiny BERT, packages that carry an IR, hardware-aware candidates, and
OpenVINO / torch bf16 packages served by a real replica."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from modelpkg.errors import PackageError
from modelpkg.hardware import HardwareProfile, _cpuinfo, detect, serving_mismatch
from modelpkg.manifest import FidelityBudget
from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline
from optimizers.candidate import Candidate
from optimizers.chain import optimize
from optimizers.evaluate import OutputsEvaluator
from optimizers.packaging import relied_on_features, write_candidate_package
from optimizers.passes.base import Artifact, PassFailedError, PassUnavailableError
from optimizers.recipe import Recipe, RecipeError, load_plan
from tests.integration.test_server import _cosines
from tests.unit.optimizers.test_passes import TEXTS, _context, _run, tiny_onnx  # noqa: F401  (tiny_onnx is a fixture)

openvino = pytest.importorskip("openvino", reason="openvino is not installed")


def _cpu_has_bf16() -> bool:
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def tiny_ir(tiny_source, tiny_onnx, tmp_path_factory) -> Artifact:  # noqa: F811
    return _run("openvino", tiny_onnx, _context(tiny_source, tmp_path_factory.mktemp("ir"))).artifact


def test_openvino_ir_in_f32_matches_the_onnx_model(tiny_source, tiny_onnx, tiny_ir) -> None:  # noqa: F811
    assert tiny_ir.format == "openvino" and tiny_ir.runtime == "openvino" and tiny_ir.precision == "fp32"
    assert {p.name for p in tiny_ir.path.iterdir()} == {"model.xml", "model.bin"}
    evaluator = OutputsEvaluator(tiny_source, 1, TEXTS)
    assert _cosines(evaluator.outputs(tiny_ir, TEXTS), evaluator.outputs(tiny_onnx, TEXTS)).min() > 0.9999


def test_openvino_bf16_runs_where_the_cpu_has_bf16_and_skips_with_the_reason_elsewhere(
    tiny_source,
    tiny_onnx,  # noqa: F811
    tmp_path,
) -> None:
    context = _context(tiny_source, tmp_path)
    if not _cpu_has_bf16():
        with pytest.raises(PassUnavailableError, match="no bf16 units"):
            _run("openvino", tiny_onnx, context, inference_precision="bf16")
        return
    out = _run("openvino", tiny_onnx, context, inference_precision="bf16")
    assert out.artifact.precision == "bf16" and out.artifact.options == {"inference_precision": "bf16"}
    assert context.evaluate(out.artifact).cosine_min > 0.99


def test_an_openvino_candidate_s_size_is_its_ir_on_disk(tiny_ir) -> None:
    files = [f for f in tiny_ir.path.rglob("*") if f.suffix in (".xml", ".bin")]
    assert files and Candidate("ir", tiny_ir, []).size_bytes == sum(f.stat().st_size for f in files) > 0


def test_openvino_passes_skip_on_cuda(tiny_source, tiny_onnx, tmp_path) -> None:  # noqa: F811
    from dataclasses import replace

    with pytest.raises(PassUnavailableError, match="run on the CPU"):
        _run("openvino", tiny_onnx, replace(_context(tiny_source, tmp_path), device="cuda"))


def _fake_quantize_ops(artifact: Artifact) -> int:
    model = openvino.Core().read_model(str(artifact.model_file))
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def test_nncf_quantize_inserts_int8_quantizers_and_records_its_fidelity(tiny_source, tiny_ir, tmp_path) -> None:
    out = _run("nncf_quantize", tiny_ir, _context(tiny_source, tmp_path), subset_size=16)
    assert out.artifact.precision == "int8" and _fake_quantize_ops(out.artifact) >= 12  # 12 MatMuls with weights
    assert _fake_quantize_ops(tiny_ir) == 0
    (first,) = out.details["tries"]
    assert first["how"] == "nncf.quantize" and first["within_budget"] and first["fidelity"]["cosine_min"] > 0.99


def test_nncf_accuracy_control_runs_when_plain_int8_misses_and_fails_naming_the_tries(
    tiny_source, tiny_ir, tmp_path
) -> None:
    fp32_only = FidelityBudget(max_abs_error=1e-5)  # the f32 IR is ~1e-7 from torch; int8 is far above 1e-5
    with pytest.raises(PassFailedError, match=r"no int8 model within the fidelity budget after 2 tries") as failure:
        _run(
            "nncf_quantize", tiny_ir, _context(tiny_source, tmp_path, fp32_only), subset_size=16, validation_samples=16
        )
    hows = [t["how"] for t in failure.value.details["tries"]]
    assert hows == ["nncf.quantize", "nncf.quantize_with_accuracy_control"]


def test_nncf_accuracy_control_stops_at_its_time_budget_and_says_so(tiny_source, tiny_ir, tmp_path) -> None:
    fp32_only = FidelityBudget(max_abs_error=1e-5)  # plain int8 misses it, so accuracy control starts
    with pytest.raises(PassFailedError, match=r"accuracy control reached its time budget \(0.001 s") as failure:
        _run(
            "nncf_quantize",
            tiny_ir,
            _context(tiny_source, tmp_path, fp32_only),
            subset_size=16,
            validation_samples=16,
            accuracy_control_s=0.001,
        )
    stopped = failure.value.details["tries"][-1]
    assert stopped["how"] == "nncf.quantize_with_accuracy_control" and stopped["stopped_after_s"] < 30


def test_an_openvino_package_carries_its_ir_and_refuses_a_stray_bin(tiny_source, tiny_ir, tmp_path) -> None:
    candidate = Candidate("openvino-f32", tiny_ir, chain=[])
    package = write_candidate_package(tiny_source, candidate, tmp_path / "pkg")
    manifest = package.manifest
    assert (manifest.runtime, manifest.format, manifest.model_path) == ("openvino", "openvino", "model.xml")
    assert {f.path for f in manifest.files} >= {"model.xml", "model.bin"}
    assert manifest.hardware == detect() and manifest.openvino_options.inference_precision == "f32"
    (package.root / "extra.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PackageError, match=r"holds files its manifest does not list|pickle-capable"):
        load_package(package.root)


def test_cpuinfo_is_read_for_model_and_isa_flags(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    model, flags = _cpuinfo(info)
    assert model == "Test CPU 9000" and {"avx512_bf16", "amx_tile"} <= flags
    assert _cpuinfo(tmp_path / "absent")[1] == set()


def test_features_the_package_relied_on_and_the_warning_where_they_are_missing() -> None:
    xeon = HardwareProfile(cpu_model="Xeon", cpu_flags=["amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni"])
    epyc = HardwareProfile(cpu_model="EPYC", cpu_flags=["avx512_bf16", "avx512_vnni"])
    old = HardwareProfile(cpu_model="Old", cpu_flags=["avx2"])
    bf16 = Artifact(Path("m"), "openvino", "bf16", {"inference_precision": "bf16"})
    int8_bf16 = Artifact(Path("m"), "openvino", "int8", {"inference_precision": "bf16"})
    assert relied_on_features(bf16, xeon) == ["bf16", "amx"]
    assert relied_on_features(int8_bf16, epyc) == ["bf16", "vnni"]
    assert relied_on_features(Artifact(Path("m.onnx"), "onnx"), xeon) == []
    warning = serving_mismatch(["bf16", "amx"], xeon, epyc)
    assert warning and "relies on amx" in warning and "Xeon" in warning and "still serve" in warning
    assert serving_mismatch(["bf16", "vnni"], epyc, xeon) is None
    assert "bf16, vnni" in (serving_mismatch(["bf16", "vnni"], epyc, old) or "")


def test_recipes_name_known_hardware_features_and_candidates_skip_without_them(tiny_model_dir, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates:\n  - name: x\n    requires: [warp]\n    steps: [{pass: export_onnx}]\n")
    with pytest.raises(RecipeError, match=r"candidates\.0\.requires = \['warp'\]: .*unknown hardware features"):
        load_plan(bad)
    recipe = Recipe.model_validate(
        {
            "profile": {"items": 32, "max_batch": 4},
            "candidates": [
                {"name": "onnx", "steps": [{"pass": "export_onnx"}]},
                {"name": "gpu-only", "requires": ["cuda"], "steps": [{"pass": "export_onnx"}]},
            ],
        }
    )
    result = optimize(tiny_model_dir, tmp_path / "pkg", recipe=recipe, cache_dir=tmp_path / "cache")
    skipped = next(c for c in result.candidates if c.name == "gpu-only")
    assert skipped.status == "skipped" and skipped.reason.startswith("needs cuda;")
    assert result.report["hardware"]["cpu_model"] == detect().cpu_model
    assert "Measured on:" in (result.package.root / "report.md").read_text()


@pytest.fixture(scope="module")
def runtime_packages(tiny_source, tiny_ir, tmp_path_factory) -> dict[str, Path]:
    """Tiny packages for the OpenVINO runtime and for torch with bf16 weights."""
    root = tmp_path_factory.mktemp("runtime-packages")
    bf16 = _run("torch_precision", Artifact(tiny_source.path, "hf"), _context(tiny_source, root / "bf16"))
    packages = {}
    for name, artifact in (("tiny-openvino", tiny_ir), ("tiny-torch-bf16", bf16.artifact)):
        source = type(tiny_source)(**{**tiny_source.__dict__, "name": name})
        packages[name] = write_candidate_package(source, Candidate(name, artifact, chain=[]), root / name).root
    return packages


@pytest.mark.serve
def test_openvino_and_torch_bf16_packages_are_served_like_their_runtime_runs_them(
    server, minilm_packages, runtime_packages
) -> None:
    server.deploy(list(runtime_packages.values()))
    try:
        for name, root in runtime_packages.items():
            response = httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS, "model": name}, timeout=60)
            assert response.status_code == 200, response.text
            served = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
            direct = TextPipeline.from_package(load_package(root), threads=1).run(TEXTS)[0]
            assert _cosines(served, direct).min() >= 0.999, name
            meta = httpx.get(f"{server.url}/v2/models/{name}", timeout=10).json()
            assert meta["parameters"]["optiserve"]["runtime"] in ("openvino", "torch")
    finally:
        server.deploy(minilm_packages.package.root)
