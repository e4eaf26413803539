"""The encoder families people serve (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MPNet) with the pooling,
normalization and prompts their sentence-transformers files declare: loaded, exported, packaged and run as the
server runs them, checked against sentence-transformers on the same random-weight models; Hugging Face ids
resolved in the local cache; the retrieval check of the fidelity report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corpus import load_split
from modelpkg.errors import OptiserveError
from modelpkg.manifest import BATCH_INVARIANT_COSINE, Fidelity, FidelityBudget
from modelpkg.package import ModelPackage
from modelpkg.pipeline import TextPipeline, UnknownPromptError, apply_prompt
from modelpkg.runtimes.onnx import OnnxRuntime
from modelpkg.tokenizer import TextEncoder
from optimizers.budget import admits, judging_limits, violations
from optimizers.fidelity import output_fidelity, recall_at_k, retrieval_queries
from optimizers.passes.export_onnx import ExportOnnxConfig, export_onnx
from optimizers.source import SourceModel, resolve_model_id
from tests.support.families import FAMILIES, PROMPTS, build_family
from tests.support.paths import RECIPES

RECIPES = RECIPES
TEXTS = load_split("heldout")[:48]
# each family with the pooling it is checked with in the per-family tests (every mode is checked on its own below)
FAMILY_POOLING = {"bert": "cls", "roberta": "mean", "xlm-roberta": "lasttoken", "distilbert": "mean", "mpnet": "mean"}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _reference(root: Path, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
    """The model's vectors as sentence-transformers computes them (its own batching and padding); where it is not
    installed, a plain torch implementation of each pooling mode over transformers' outputs."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return _torch_reference(root, texts, prompt_name)
    model = SentenceTransformer(str(root), device="cpu")
    return np.asarray(model.encode(texts, batch_size=8, prompt_name=prompt_name, convert_to_numpy=True))


def _torch_reference(root: Path, texts: list[str], prompt_name: str | None) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    if prompt_name:
        prompt = json.loads((root / "config_sentence_transformers.json").read_text())["prompts"][prompt_name]
        texts = [prompt + t for t in texts]
    pooling = json.loads((root / "1_Pooling" / "config.json").read_text())
    tokenizer, model = AutoTokenizer.from_pretrained(root), AutoModel.from_pretrained(root).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    if pooling["pooling_mode_cls_token"]:
        pooled = hidden[:, 0]
    elif pooling["pooling_mode_lasttoken"]:
        pooled = hidden[torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1]
    else:
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _package(source: SourceModel, onnx_file: Path, out: Path) -> ModelPackage:
    """The exported model as a package, written as the chain writes its selected candidate."""
    from optimizers.candidate import Candidate
    from optimizers.packaging import write_candidate_package
    from optimizers.passes.base import Artifact

    return write_candidate_package(source, Candidate("onnx-fp32", Artifact(onnx_file, "onnx", "fp32"), []), out)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name, pooling=FAMILY_POOLING[name], prompts=PROMPTS) for name in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_packages_and_serves_like_sentence_transformers(
    family: str, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Each family loads (inputs, pad id, pooling, prompts from its files), exports, packages, and its package's
    pipeline (length-sorted calls of 4, padded) gives sentence-transformers' vectors, with and without a prompt."""
    root = family_dirs[family]
    source = SourceModel.load(root)
    assert set(source.text_inputs) == set(FAMILIES[family].input_names)  # no token types but for BERT
    assert source.pooling.mode == FAMILY_POOLING[family] and source.pooling.normalize
    assert source.tokenizer is not None and source.tokenizer.pad_token_id == FAMILIES[family].config["pad_token_id"]
    assert dict(source.prompts) == PROMPTS and source.output_dim == 32

    onnx_file = export_onnx(source, tmp_path / "model.onnx", TEXTS[:16], ExportOnnxConfig())
    package = _package(source, onnx_file, tmp_path / "package")
    manifest = package.manifest
    assert [i.name for i in manifest.inputs] == list(source.text_inputs)
    assert manifest.prompts == PROMPTS and manifest.pooling == source.pooling

    pipeline = TextPipeline.from_package(package, threads=1)
    served, _ = pipeline.run(TEXTS, max_items=4)
    expected = _reference(root, TEXTS)
    assert _cosine(served, expected).min() >= 0.999
    prompted, _ = pipeline.run(apply_prompt(manifest, TEXTS[:8], "query"), max_items=4)
    assert _cosine(prompted, _reference(root, TEXTS[:8], prompt_name="query")).min() >= 0.999
    assert not np.allclose(prompted, served[:8], atol=1e-4)  # the prompt changes the vectors


@pytest.mark.parametrize(
    ("family", "mode"), [("bert", "lasttoken"), ("mpnet", "lasttoken"), ("mpnet", "cls"), ("distilbert", "cls")]
)
def test_pooling_modes_match_sentence_transformers(family: str, mode: str, tmp_path: Path) -> None:
    """CLS, mean and last-token pooling (the last position the mask keeps, however much padding follows) in the
    exported graph, run on padded batches of mixed lengths, against sentence-transformers on the same model
    (with the per-family test above, each mode is checked on two or more families and pad ids)."""
    root = build_family(family, tmp_path / "model", pooling=mode, seed=3)
    source = SourceModel.load(root)
    assert source.pooling.mode == mode
    onnx_file = export_onnx(source, tmp_path / "model.onnx", TEXTS[:8], ExportOnnxConfig())
    assert source.tokenizer is not None
    pipeline = TextPipeline(
        TextEncoder.from_spec(source.path, source.tokenizer), OnnxRuntime(onnx_file, threads=1), source.output_dim
    )
    texts = TEXTS[:24]
    served, stats = pipeline.run(texts, max_items=8)
    assert stats.padding_ratio > 0  # the check covers padded rows
    assert _cosine(served, _reference(root, texts)).min() >= 0.999


def test_sentence_transformers_6_pooling_config_and_an_old_style_transformer_folder(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """``pooling_mode`` (sentence-transformers 6's key) is read like the legacy booleans, and a transformer kept
    in ``0_Transformer/`` (older models) loads from there, with pooling and prompts read from the root."""
    root = tmp_path / "model"
    shutil.copytree(family_dirs["roberta"], root / "0_Transformer")
    for name in ("modules.json", "config_sentence_transformers.json", "1_Pooling", "2_Normalize"):
        (root / "0_Transformer" / name).rename(root / name)
    modules = json.loads((root / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    source = SourceModel.load(root)
    assert source.path == (root / "0_Transformer").resolve() and source.name == "model"
    assert source.pooling.mode == "cls" and dict(source.prompts) == PROMPTS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pooling": {"pooling_mode": "weightedmean"}}, "pooling \\['weightedmean'\\] is not supported"),
        ({"pooling": {"pooling_mode": ["cls", "mean"]}}, "is not supported"),
        ({"pooling": {"pooling_mode": "mean", "include_prompt": False}}, "include_prompt false"),
        ({"dense": True}, "modules \\['Dense'\\] are not supported"),
    ],
)
def test_what_the_graph_would_not_reproduce_is_refused(
    change: dict[str, Any], message: str, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "model"
    shutil.copytree(family_dirs["distilbert"], root)
    if "pooling" in change:
        (root / "1_Pooling" / "config.json").write_text(json.dumps(change["pooling"]))
    if change.get("dense"):
        modules = json.loads((root / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
        (root / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(OptiserveError, match=message):
        SourceModel.load(root)


def test_prompts_in_the_manifest(family_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Declared prompts are recorded; ``apply_prompt`` prepends one by name, the default where none is named,
    and refuses a name the model does not declare. Packages without prompts load as before."""
    source = SourceModel.load(family_dirs["bert"])
    onnx_file = export_onnx(source, tmp_path / "model.onnx", TEXTS[:4], ExportOnnxConfig())
    manifest = _package(source, onnx_file, tmp_path / "package").manifest
    assert apply_prompt(manifest, ["a b"], "passage") == ["passage: a b"]
    assert apply_prompt(manifest, ["a b"]) == ["a b"]  # no default prompt declared
    with_default = manifest.model_copy(update={"default_prompt_name": "query"})
    assert apply_prompt(with_default, ["a b"]) == ["query: a b"]
    with pytest.raises(UnknownPromptError, match="no prompt 'doc'; its prompts: passage, query"):
        apply_prompt(manifest, ["a b"], "doc")
    raw = json.loads(manifest.model_dump_json(exclude={"prompts", "default_prompt_name"}))
    assert type(manifest).model_validate(raw).prompts == {}


def _fake_hub_cache(cache: Path, repo: str, model_dir: Path, revision: str = "abc123") -> Path:
    """A Hugging Face cache entry as ``hf download`` leaves it: refs/main naming a snapshot directory whose files
    are links into ``blobs/``."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / revision
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    for number, file in enumerate(sorted(p for p in model_dir.rglob("*") if p.is_file())):
        blob = entry / "blobs" / f"{revision}-{number}"
        shutil.copy2(file, blob)
        link = snapshot / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_ids_resolve_in_the_local_cache(
    family_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``org/name`` (and ``org/name@revision``) is looked up in HF_HUB_CACHE, else $HF_HOME/hub; the package is
    named after the repository, not the snapshot's hash."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    snapshot = _fake_hub_cache(tmp_path / "hf-home" / "hub", "acme/tiny-mpnet", family_dirs["mpnet"])
    source = SourceModel.load(Path("acme/tiny-mpnet"))
    assert source.path == snapshot.resolve() and source.name == "tiny-mpnet"
    assert resolve_model_id("acme/tiny-mpnet@main") == snapshot
    assert resolve_model_id("acme/tiny-mpnet@abc123") == snapshot
    onnx_file = export_onnx(source, tmp_path / "model.onnx", TEXTS[:4], ExportOnnxConfig())
    manifest = _package(source, onnx_file, tmp_path / "package").manifest  # the linked files are copied
    assert manifest.name == "tiny-mpnet" and manifest.source.path == str(snapshot.resolve())

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    other = _fake_hub_cache(tmp_path / "elsewhere", "acme/tiny-mpnet", family_dirs["bert"], "def456")
    assert SourceModel.load("acme/tiny-mpnet").path == other.resolve()


def test_a_missing_hub_id_says_what_to_download_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptiserveError) as raised:
        SourceModel.load(Path("intfloat/multilingual-e5-small"))
    message = str(raised.value)
    assert str(tmp_path / "cache") in message
    assert 'hf download intfloat/multilingual-e5-small --include "*.json" --include "*.safetensors"' in message
    assert "--local-dir models/multilingual-e5-small" in message
    with pytest.raises(OptiserveError, match="revision v2"):
        resolve_model_id("intfloat/multilingual-e5-small@v2")
    with pytest.raises(OptiserveError, match="no such file or directory"):
        SourceModel.load(tmp_path / "not" / "a" / "model")


def test_recall_at_10_and_its_budget() -> None:
    """Recall@10 counts queries whose own passage is among their 10 nearest; it joins the judging numbers where
    measured, and a budget's ``min_recall_at_10`` limits it (unset: not judged)."""
    rng = np.random.default_rng(0)
    passages = rng.normal(size=(50, 16))
    assert recall_at_k(passages + 0.01 * rng.normal(size=passages.shape), passages) > 0.99  # every query finds its own
    assert recall_at_k(rng.normal(size=(50, 16)), passages) < 0.5
    assert retrieval_queries(["one two three four five", "single"]) == ["one two", "single"]

    candidate = passages + 0.05 * rng.normal(size=passages.shape)
    fidelity = output_fidelity(passages, candidate, task="embedding", queries=(passages, rng.normal(size=(50, 16))))
    assert fidelity.source_recall_at_10 > 0.99 and fidelity.recall_at_10 is not None
    assert fidelity.recall_at_10 < 0.5 and fidelity.judged_by == ("cosine_mean", "cosine_min", "recall_at_10")
    assert admits(FidelityBudget(min_cosine_mean=0.9, min_cosine_min=0.9), fidelity)
    strict = FidelityBudget(min_cosine_mean=0.9, min_cosine_min=0.9, min_recall_at_10=0.9)
    assert [name for name, _, _ in judging_limits(strict, fidelity)] == ["cosine_mean", "cosine_min", "recall_at_10"]
    assert violations(strict, fidelity) == [f"recall_at_10 {fidelity.recall_at_10:.4f} < 0.9"]
    unmeasured = Fidelity(cosine_mean=1.0, cosine_p1=1.0, cosine_min=1.0, samples=1)
    assert admits(strict, unmeasured) and unmeasured.judged_by == ("cosine_mean", "cosine_min")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_the_chain(family: str, family_chains, tmp_path: Path) -> None:
    """The chain (export and dynamic int8) on each family (tests/conftest.py: family_chains, whose packages the
    integration tier serves): the packages serve the source's vectors (cosine 0.999 for the fp32 export), prompts
    are recorded, and the fidelity report has the retrieval check."""
    from optimizers.packaging import write_candidate_package

    root, result = family_chains[family]
    assert result.package.manifest.prompts == PROMPTS
    by_name = {c.name: c for c in result.candidates}
    assert {"onnx-fp32", "int8-dynamic"} <= {n for n, c in by_name.items() if c.artifact is not None}
    for candidate in by_name.values():
        assert candidate.fidelity is not None and candidate.fidelity.recall_at_10 is not None
        assert candidate.fidelity.source_recall_at_10 == by_name["torch-fp32"].fidelity.recall_at_10  # type: ignore[union-attr]
    # With their batch-mates, fp32 outputs move by rounding, and so do dynamic int8's with a scale per row (the
    # default; per-call scales move them: tests/unit/optimizers/test_chain.py)
    invariance = {name: c.fidelity.batch_invariance for name, c in by_name.items()}  # type: ignore[union-attr]
    assert min(invariance["onnx-fp32"], invariance["int8-dynamic"]) >= BATCH_INVARIANT_COSINE
    fp32 = write_candidate_package(SourceModel.load(root), by_name["onnx-fp32"], tmp_path / "fp32")
    expected = _reference(root, TEXTS)
    served, _ = TextPipeline.from_package(fp32, threads=1).run(TEXTS)
    assert _cosine(served, expected).min() >= 0.999
    selected, _ = TextPipeline.from_package(result.package, threads=1).run(TEXTS)
    assert _cosine(selected, expected).mean() >= result.package.manifest.budget.min_cosine_mean  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_pass_that_applies(family: str, family_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Graph fusion, int8 dynamic and static, fp16, OpenVINO (f32, NNCF int8), torch bf16, pruning and a
    layer-dropped student on each family: each builds (pruning halves every layer's attention heads and feed-forward
    neurons, DistilBERT's ``q_lin``.../``ffn.lin1`` as the others' ``attention.self``.../``intermediate``, and the
    pruned model loads again for its export; MPNet's heads are refused by name: its relative position bias is
    shared by all layers per head)."""
    pytest.importorskip("openvino")
    from optimizers.chain import optimize

    data = tmp_path / "texts.txt"  # 300 corpus texts (60 held out), so that twelve candidates stay quick
    data.write_text("\n".join(load_split("train")[:300]) + "\n")
    result = optimize(family_dirs[family], tmp_path / "package", recipe=RECIPES / "families-all.yaml", data_file=data)
    outcome = {c.name: (c.status, c.reason) for c in result.candidates}
    if family == "mpnet":
        status, reason = outcome.pop("pruned")
        assert status == "skipped" and "attention heads of MPNetLayer cannot be pruned" in str(reason), reason
    for name, (status, reason) in outcome.items():
        assert status not in ("failed", "skipped"), (name, status, reason)
    fidelity = {c.name: c.fidelity for c in result.candidates if c.fidelity is not None}
    assert fidelity["fused"].cosine_min >= 0.999 and fidelity["openvino-f32"].cosine_min >= 0.999
    for name in ("int8-dynamic", "int8-static", "onnx-fp16", "openvino-int8", "torch-bf16"):
        assert fidelity[name].cosine_mean >= 0.99, (name, fidelity[name])
    details = {c.name: c.chain[0].details for c in result.candidates if c.name.startswith("pruned") and c.chain}
    for pruned in details.values():
        assert pruned["ffn_neurons_kept"] * 2 == pruned["ffn_neurons_before"], pruned
        assert pruned["parameters_after"] < pruned["parameters_before"], pruned
    assert "heads_kept" not in details["pruned-ffn"]
    if family != "mpnet":
        assert details["pruned"]["heads_kept"] * 2 == details["pruned"]["heads_before"], details["pruned"]
