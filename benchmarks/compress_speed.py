"""Does physical compression make the model faster? Prune and low-rank on a larger toy BERT, timed side by side.

    .venv/bin/python benchmarks/compress_speed.py [--rounds 5] [--threads 2]

Builds a 4-layer, 768-wide BERT (3,072 FFN neurons) with seeded random weights, then the ``prune`` pass at 50% of
the FFN neurons and the ``low_rank`` pass at a quarter of full rank (FFN matrices), and times torch inference on
batches of 32 x 128 tokens for each, interleaved, median of the rounds. Prints parameter counts and speed ratios
to the unpruned model, with the CPU named. (A random model says nothing about fidelity: this measures speed.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from corpus import load_split  # noqa: E402
from modelpkg.hardware import detect  # noqa: E402
from modelpkg.manifest import FidelityBudget  # noqa: E402
from modelpkg.runtimes.torch import load_model  # noqa: E402
from optimizers.evaluate import OutputsEvaluator  # noqa: E402
from optimizers.passes.base import Artifact, PassContext, get_pass  # noqa: E402
from optimizers.passes.low_rank import factorize_model  # noqa: E402
from optimizers.source import SourceModel, bundled_model_dir  # noqa: E402

CONFIG = {"hidden_size": 768, "num_hidden_layers": 4, "num_attention_heads": 12, "intermediate_size": 3072}


def toy_model(root: Path) -> SourceModel:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**CONFIG), add_pooling_layer=False).eval().save_pretrained(root, safe_serialization=True)
    bundled = bundled_model_dir()
    for name in ("tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundled / name, root / name)
    pooling = json.loads((root / "1_Pooling/config.json").read_text())
    (root / "1_Pooling/config.json").write_text(json.dumps({**pooling, "word_embedding_dimension": 768}))
    return SourceModel.from_dir(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="compress-speed-"))
    source = toy_model(work / "toy")
    texts = load_split("train")[:64]
    context = PassContext(
        source, work / "out", texts, texts, texts, FidelityBudget(), OutputsEvaluator(source, 1, texts)
    )
    prune = get_pass("prune")
    pruned = prune.run(Artifact(source.path, "hf"), prune.config_type(ffn_keep=0.5, samples=64), context).artifact
    models = {
        "original": load_model(source.path, "embedding", source.pooling),
        "prune 50% FFN": load_model(pruned.path, "embedding", source.pooling),
    }
    low_rank = load_model(source.path, "embedding", source.pooling)
    shape = factorize_model(low_rank, 0.25, ("ffn",))
    models[f"low_rank 0.25 ({shape['macs_remaining']} of FFN multiply-adds)"] = low_rank
    ids = torch.randint(1000, 20000, (32, 128))
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(*inputs)  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(*inputs)
                times[name].append(time.perf_counter() - start)
    here = detect()
    print(
        f"CPU: {here.cpu_model}, {here.cpu_count} cores, {', '.join(here.features)}; torch {torch.__version__}, "
        f"{args.threads} threads, batch 32 x 128 tokens, median of {args.rounds} interleaved rounds"
    )
    base = statistics.median(times["original"])
    print("| model | parameters | ms per batch | speed vs original |\n|---|---|---|---|")
    for name, model in models.items():
        median = statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.1f} M | {median * 1e3:.0f} | {base / median:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
