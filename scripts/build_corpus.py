"""Freeze the text corpora from docstrings: the standard library's (the corpus every split comes from) and the
pinned third-party packages' (extra training text for distillation).

Run once to (re)create the shipped files; nothing is downloaded or derived at run time. Sentences are
deduplicated, length-filtered and shuffled with a fixed seed.

    python scripts/build_corpus.py                        # corpus/data/corpus.txt, with CPython 3.11
    .venv/bin/python scripts/build_corpus.py --train-extra  # corpus/data/train_extra.txt.gz (+ .json provenance)

The extra training text is read from the packages' source files with ``ast`` (nothing is imported), in a fixed
order, from the versions pinned in constraints.txt (and torch's), which the provenance file records; sentences
that appear anywhere in corpus.txt are left out, so the validation, calibration and held-out splits never
leak into training.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import random
import re
import sys
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "corpus" / "data"
OUT = DATA / "corpus.txt"
EXTRA_OUT = DATA / "train_extra.txt.gz"
EXTRA_SIZE = 40_000
# (import name, distribution name): libraries the project pins, whose docstrings are technical English like the
# held-out set's.
EXTRA_PACKAGES = (
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("matplotlib", "matplotlib"),
    ("ray", "ray"),
    ("onnx", "onnx"),
    ("openvino", "openvino"),
    ("nncf", "nncf"),
    ("optuna", "optuna"),
    ("pydantic", "pydantic"),
    ("locust", "locust"),
    ("hypothesis", "hypothesis"),
    ("sentence_transformers", "sentence-transformers"),
    ("onnxruntime", "onnxruntime"),
)
SKIP = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "pydoc_data")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstrings() -> list[str]:
    found: list[str] = []
    for mod in sorted(sys.stdlib_module_names):
        if mod.startswith("_") or mod.startswith(SKIP):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc:
                found.append(doc)
        if module.__doc__:
            found.append(module.__doc__)
    return found


def sentences(docs: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for doc in docs:
        for para in doc.split("\n\n"):
            text = " ".join(para.split())
            if not text or ">>>" in text or "::" in text:
                continue
            for s in SENTENCE.split(text):
                if 24 <= len(s) <= 400 and s[0].isupper() and s.endswith(".") and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def source_docstrings(package: str) -> list[str]:
    """Docstrings of every module, class and function in an installed package's source, tests left out."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: run this with the project's .venv")
    root = Path(next(iter(spec.submodule_search_locations)))
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if "test" in path.relative_to(root).as_posix().lower():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    found.append(doc)
    return found


def train_extra() -> None:
    held = set(OUT.read_text(encoding="utf-8").splitlines())
    items, versions = [], {}
    for package, dist in EXTRA_PACKAGES:
        versions[dist] = importlib.metadata.version(dist)
        items.extend(s for s in sentences(source_docstrings(package)) if s not in held)
    items = sorted(set(items))
    random.Random(20261203).shuffle(items)
    chosen = items[:EXTRA_SIZE]
    with gzip.GzipFile(EXTRA_OUT, "wb", mtime=0) as out:
        out.write(("\n".join(chosen) + "\n").encode("utf-8"))
    provenance = {"sentences": len(chosen), "distinct_found": len(items), "seed": 20261203, "packages": versions}
    EXTRA_OUT.with_suffix("").with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {len(chosen)} of {len(items)} sentences to {EXTRA_OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-extra", action="store_true", help="write the extra training text instead")
    if parser.parse_args().train_extra:
        train_extra()
        return
    items = sentences(docstrings())
    random.Random(20261123).shuffle(items)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(items) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} sentences to {OUT}")


if __name__ == "__main__":
    main()
