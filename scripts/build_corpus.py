"""Freeze the text corpus from the Python standard library's docstrings.

Run once with CPython 3.11 to (re)create ``corpus/data/corpus.txt``; the file is shipped, so nothing is
downloaded or derived at run time. Sentences are deduplicated, length-filtered and shuffled with a fixed seed.

    python scripts/build_corpus.py
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "corpus" / "data" / "corpus.txt"
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


def main() -> None:
    items = sentences(docstrings())
    random.Random(20261123).shuffle(items)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(items) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} sentences to {OUT}")


if __name__ == "__main__":
    main()
