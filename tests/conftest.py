"""Shared fixtures. Expensive things are built once per session: the optimized MiniLM packages and one Ray
Serve instance on 127.0.0.1 (tests that need another deployment redeploy on it and restore it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Every chain step the tests run is cached in the session's temp dir, never in the user's cache.
os.environ.setdefault("OPTISERVE_CACHE", tempfile.mkdtemp(prefix="optiserve-test-cache-"))

from optimizers.source import SourceModel, bundled_model_dir
from tests.support.paths import RECIPES

if TYPE_CHECKING:
    from optimizers.chain import ChainResult

TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}
TEST_RECIPE = RECIPES / "minilm-ci.yaml"
FIGURES_FILE = Path(__file__).resolve().parent.parent / "runs" / "reliability" / "figures.json"
SENTENCE_TRANSFORMERS_FILES = ("tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with seeded random weights (not zeros) and MiniLM's tokenizer and pooling files."""
    import torch
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY_CONFIG), add_pooling_layer=False).eval()
    model.save_pretrained(root, safe_serialization=True)
    bundled = bundled_model_dir()
    for name in SENTENCE_TRANSFORMERS_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundled / name, root / name)
    pooling = json.loads((root / "1_Pooling/config.json").read_text())
    pooling["word_embedding_dimension"] = TINY_CONFIG["hidden_size"]
    (root / "1_Pooling/config.json").write_text(json.dumps(pooling))
    return root


CLASSIFIER_LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT sequence classifier with three labels, seeded random weights and MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("tiny-classifier", numbered=False)
    torch.manual_seed(1)
    config = BertConfig(
        **{**TINY_CONFIG, "architectures": ["BertForSequenceClassification"]},
        num_labels=len(CLASSIFIER_LABELS),
        id2label=dict(enumerate(CLASSIFIER_LABELS)),
        label2id={label: i for i, label in enumerate(CLASSIFIER_LABELS)},
    )
    BertForSequenceClassification(config).eval().save_pretrained(root, safe_serialization=True)
    shutil.copy2(bundled_model_dir() / "tokenizer.json", root / "tokenizer.json")
    return root


@pytest.fixture(scope="session")
def classifier_package(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The chain run on the tiny classifier (selection by top-1 agreement)."""
    from optimizers.chain import optimize

    return optimize(
        tiny_classifier_dir, tmp_path_factory.mktemp("classifier") / "package", profile_items=32, recipe=TEST_RECIPE
    )


@pytest.fixture(scope="session")
def tiny_source(tiny_model_dir: Path) -> SourceModel:
    return SourceModel.from_dir(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_classifier_source(tiny_classifier_dir: Path) -> SourceModel:
    return SourceModel.from_dir(tiny_classifier_dir)


@pytest.fixture(scope="session")
def minilm_packages(tmp_path_factory: pytest.TempPathFactory):
    """The real chain on the bundled MiniLM: optimized package + baseline package (built once, ~1 min)."""
    from optimizers.chain import optimize

    root = tmp_path_factory.mktemp("minilm")
    return optimize(
        bundled_model_dir(), root / "optimized", baseline_out=root / "baseline", profile_items=64, recipe=TEST_RECIPE
    )


@pytest.fixture(scope="session")
def tiny_optimized(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny BERT through the tests' chain (ONNX int8): a real package whose model calls cost next to nothing,
    for tests of the server and its operations rather than of MiniLM (vectors 32 wide, MiniLM's 384)."""
    from optimizers.chain import optimize

    return optimize(tiny_model_dir, tmp_path_factory.mktemp("tiny-optimized") / "package", recipe=TEST_RECIPE).package


@pytest.fixture(scope="session")
def family_chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ChainResult]]:
    """Each encoder family (tests/support/families.py: CHAIN_POOLING, its prompts, Matryoshka widths on
    xlm-roberta) and its chain run (tests/recipes/families-ci.yaml), built once: the unit tier checks the chains,
    the integration tier serves their packages."""
    from optimizers.chain import optimize
    from tests.support.families import CHAIN_POOLING, MATRYOSHKA, PROMPTS, build_family

    root = tmp_path_factory.mktemp("family-chains")
    chains = {}
    for family, pooling in CHAIN_POOLING.items():
        widths = MATRYOSHKA if family == "xlm-roberta" else ()
        source = build_family(family, root / f"{family}-source", pooling, prompts=PROMPTS, matryoshka_dims=widths)
        chains[family] = (source, optimize(source, root / family, recipe=RECIPES / "families-ci.yaml"))
    return chains


@pytest.fixture(scope="session")
def server(minilm_packages) -> Iterator:
    """One Ray Serve instance on free 127.0.0.1 ports (HTTP and gRPC), serving the optimized MiniLM package."""
    from serving.launcher import start
    from serving.ports import free_port

    # One logical GPU (a resource count, no device) so GPU placement can be tested on machines without one.
    # KServe v2 over gRPC beside HTTP (tests/support/grpc.py), as `optiserve serve --grpc-port` serves it.
    srv = start("127.0.0.1", free_port(), num_cpus=2, num_gpus=1, grpc_port=free_port())
    try:
        srv.deploy(minilm_packages.package.root)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def figures() -> Iterator[dict]:
    """Figures that reliability tests measured; written to runs/reliability/figures.json for
    scripts/reliability_report.py (which renders docs/reliability.md)."""
    collected: dict = {}
    yield collected
    if collected:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=FIGURES_FILE.parents[2]
        ).stdout.strip()
        for entry in collected.values():
            entry["commit"] = commit or "unknown"
        FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
        FIGURES_FILE.write_text(json.dumps({**previous, **collected}, indent=2) + "\n")
