"""The command line: help, version, -v/-q anywhere, one-line errors with distinct exit codes, quiet library
output, the serve banner and docs page, and `optiserve serve` answering then stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpkg.package import ModelPackage, read_manifest
from modelpkg.version import __version__
from optimizers.candidate import Candidate
from optimizers.packaging import write_candidate_package
from optimizers.passes.base import Artifact
from optimizers.source import SourceModel
from optiserve import exit_codes
from optiserve.cli import DESCRIPTION, build_parser, main
from serving.ports import free_port
from tests.support.paths import RECIPES, ROOT
from tests.support.stores import BUCKET, s3_put, s3_store

# What the libraries print when nobody silences them (transformers, the torch exporter, ONNX Runtime, tqdm, NNCF).
THIRD_PARTY_NOISE = (
    "LOAD REPORT", "TracerWarning", "UserWarning", "pre-processing", "Loading weights", "it/s]", "━", "Statistics"
)  # fmt: skip


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("optimize", "serve", "loadtest", "demo"):
        assert command in out


def test_top_level_help_describes_the_tool_and_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert DESCRIPTION.split()[0] in out and "``" not in out  # our description, not the module docstring
    assert "exit codes:" in out and "3  a target was missed: the fidelity budget" in out


def test_command_help_shows_defaults_and_the_variables_behind_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "HTTP port (default: 8000)" in out
    assert "[env: OPTISERVE_THREADS]" in out and "[env: OPTISERVE_INGRESS]" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"optiserve {__version__}"


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["serve", "pkg"], "normal"),
        (["-v", "serve", "pkg"], "verbose"),
        (["serve", "pkg", "-v"], "verbose"),
        (["serve", "--verbose", "pkg"], "verbose"),
        (["-q", "optimize", "--out", "x"], "quiet"),
        (["optimize", "--out", "x", "--quiet"], "quiet"),
    ],
)
def test_verbosity_flags_count_before_or_after_the_command(argv: list[str], verbosity: str) -> None:
    assert build_parser().parse_args(argv).verbosity == verbosity


def test_optimizing_a_directory_without_a_model_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["optimize", str(tmp_path), "--out", str(tmp_path / "pkg")])
    assert code == exit_codes.ERROR
    err = capsys.readouterr().err
    assert err.startswith("optiserve: error: ") and "config.json not found" in err and err.count("\n") == 1


def test_verbose_after_the_command_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", str(tmp_path), "--out", str(tmp_path / "pkg"), "-v"]) == exit_codes.ERROR
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("config.json not found")


def test_a_budget_out_of_range_is_a_usage_error(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    argv = ["optimize", str(tiny_model_dir), "--out", str(tmp_path / "pkg"), "--min-cosine-mean", "1.01"]
    assert main(argv) == exit_codes.USAGE
    assert capsys.readouterr().err == "optiserve: error: --min-cosine-mean: Input should be less than or equal to 1\n"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optiserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ""},
    )


def _one_line_error(run: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert run.returncode == code, run.stdout + run.stderr
    assert run.stderr.startswith("optiserve: error: ") and run.stderr.count("\n") == 1, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr + run.stdout


@pytest.fixture(scope="module")
def tiny_package(tiny_source: SourceModel, tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """The tiny BERT as a torch fp32 package: an embedding model, so no /v1/classify."""
    out = tmp_path_factory.mktemp("cli") / "tiny-pkg"
    return write_candidate_package(
        tiny_source, Candidate("torch-fp32", Artifact(tiny_source.path, "hf"), chain=[]), out
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--host", "203.0.113.7"], "--host 203.0.113.7: not an address of this machine"),  # TEST-NET-3
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot resolve it"),
        (["MISSING"], "MISSING: no such package directory"),
        (["SAME"], "names must differ"),
        (["--autoscale", "4:1"], "--autoscale takes MIN:MAX replicas"),
    ],
    ids=["host-not-here", "host-unresolvable", "missing-package", "same-name-twice", "bad-autoscale"],
)
def test_serve_refuses_before_starting_ray_in_one_line(
    tiny_package: ModelPackage, tmp_path: Path, extra: list[str], message: str
) -> None:
    packages = [str(tiny_package.root)]
    if extra == ["MISSING"]:
        packages, extra, message = [str(tmp_path / "nope")], [], f"{tmp_path / 'nope'}: no such package directory"
    elif extra == ["SAME"]:
        packages, extra = packages * 2, []
    code = exit_codes.USAGE if "--autoscale" in extra else exit_codes.ERROR
    _one_line_error(_cli("serve", *packages, "--port", str(free_port()), *extra, timeout=120), code, message)


def test_a_bad_recipe_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\ncandidates:\n  - name: x\n    steps:\n      - pass: no_such_pass\n")
    run = _cli("optimize", str(tiny_model_dir), "--out", str(tmp_path / "pkg"), "--recipe", str(recipe))
    assert run.returncode == exit_codes.ERROR, run.stderr
    assert run.stderr.startswith(f"optiserve: error: {recipe}") and "no_such_pass" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "pkg").exists()


@pytest.mark.slow  # a whole chain in a subprocess (about 12 s)
def test_a_budget_no_candidate_meets_exits_3_quietly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A budget that validates but that nothing meets (even the fp32 export is ~1e-7 from torch), on a chain that
    exports and quantizes (ONNX Runtime, and NNCF, which draws progress bars): one error line, exit 3, our stage
    headings, and none of the libraries' output."""
    recipe = tmp_path / "unmet.yaml"
    recipe.write_text(
        "name: unmet\nprofile: {items: 32, max_batch: 4, min_batches: 2}\nbudget: {max_abs_error: 1.0e-12}\n"
        "candidates:\n"
        "  - name: int8\n    steps:\n      - pass: export_onnx\n"
        "      - pass: quantize_dynamic\n        config: {accuracy_aware: false}\n"
        "  - name: nncf\n    steps:\n      - pass: export_onnx\n      - pass: openvino\n"
        "      - pass: nncf_quantize\n        config: {accuracy_control: false, subset_size: 32}\n"
    )
    run = _cli("optimize", str(tiny_model_dir), "--out", str(tmp_path / "pkg"), "--recipe", str(recipe))
    assert run.returncode == exit_codes.UNMET, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("optiserve: error:")]
    assert len(errors) == 1 and "no candidate meets the fidelity budget" in errors[0]
    assert errors[0].endswith(f"report written to {tmp_path / 'pkg.report'}") and run.stdout == ""
    assert "[1/5] load" in run.stderr and "quantize_dynamic" in run.stderr and "Traceback" not in run.stderr
    noise = [line for line in run.stderr.splitlines() if any(text in line for text in THIRD_PARTY_NOISE)]
    assert not noise, noise


def test_the_banner_lists_only_the_routes_the_packages_answer(tiny_package: ModelPackage) -> None:
    from serving.launcher import _routes

    routes = _routes([tiny_package.manifest], docs=False)
    assert "/v1/embeddings" in routes and "/v2/models/{m}/infer" in routes
    assert "/v1/classify" not in routes and "/docs" not in routes
    assert "/docs" in _routes([tiny_package.manifest], docs=True)


@pytest.mark.parametrize(("value", "status"), [("1", 200), ("0", 404), ("auto", 404)])
def test_the_docs_page_follows_its_setting(monkeypatch: pytest.MonkeyPatch, value: str, status: int) -> None:
    """Read per request, in the replica's process (``optiserve serve`` resolves ``auto`` to 1 on loopback)."""
    from fastapi.testclient import TestClient

    from serving.app import api

    monkeypatch.setenv("OPTISERVE_DOCS", value)
    client = TestClient(api)
    assert client.get("/docs").status_code == status
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/embeddings" in schema.json()["paths"]


def _optimize_with_data(model_dir: Path, data: Path, out: Path, *flags: str) -> int:
    return main(
        ["optimize", str(model_dir), "--out", str(out), "--data", str(data), "--recipe", str(_DATA_RECIPE), *flags]
    )


_DATA_RECIPE = RECIPES / "tiny-data.yaml"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"\n  \n", "holds no text"),
        (b"one line\nanother line\n", "2 distinct non-empty inputs; the train, validation, calibration"),
        (b"caf\xe9 au lait\n" * 200, "not UTF-8 text (byte 0xe9 at offset 3)"),
    ],
    ids=["missing", "empty", "too-few-lines", "bad-encoding"],
)
def test_optimize_data_errors_are_one_line_and_write_nothing(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    data = tmp_path / "texts.txt"
    if content is not None:
        data.write_bytes(content)
    assert _optimize_with_data(tiny_model_dir, data, tmp_path / "pkg") == exit_codes.ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["texts.txt"] if content is not None else [])


def test_optimize_on_the_users_own_text_uses_it_for_every_split(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    data = tmp_path / "support-tickets.jsonl"
    lines = [
        json.dumps({"text": f"ticket {i}: the printer on floor {i % 7} shows error {i * 13 % 97}"}) for i in range(150)
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = _optimize_with_data(tiny_model_dir, data, tmp_path / "pkg", "--allow-batch-dependent")
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "pkg" / "report.json").read_text())
    assert "min_batch_invariance" not in report["budget"]  # allowed: no limit (the default is 0.9999)
    assert report["data"]["source"] == str(data.resolve()) and report["data"]["seed"] == 0
    assert report["data"]["splits"] == {"train": 90, "validation": 15, "calibration": 15, "heldout": 30}
    assert report["heldout_samples"] == 30 and "support-tickets.jsonl" in capsys.readouterr().out


def test_more_served_model_names_than_packages_is_a_usage_error(tmp_path: Path, capsys) -> None:
    code = main(["serve", str(tmp_path), "--served-model-name", "a", "--served-model-name", "b"])
    assert code == exit_codes.USAGE
    assert "--served-model-name" in capsys.readouterr().err


def test_optimize_publishes_to_s3_and_serve_refuses_a_tampered_copy_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``optimize --out s3://…`` publishes the package (credentials and endpoint from the AWS_* variables only);
    a file changed in the store afterwards is refused by ``serve`` before Ray starts, in one line."""
    monkeypatch.setenv("OPTISERVE_PACKAGE_CACHE", str(tmp_path / "cache"))
    with s3_store():
        uri = f"s3://{BUCKET}/tiny/v1"
        recipe = str(RECIPES / "export-only.yaml")
        assert main(["-q", "optimize", str(tiny_model_dir), "--out", uri, "--recipe", recipe]) == exit_codes.OK
        manifest = read_manifest(uri)
        assert manifest.format == "onnx" and (tmp_path / "cache").is_dir()
        s3_put(f"tiny/v1/{manifest.model_path}", b"not the model")
        monkeypatch.setenv("OPTISERVE_PACKAGE_CACHE", str(tmp_path / "fresh-cache"))  # another node
        run = _cli("serve", uri, "--port", str(free_port()), timeout=120)
    expected = f"{uri} does not verify: the package was modified after it was written: {manifest.model_path!r} fails"
    _one_line_error(run, exit_codes.ERROR, expected)
