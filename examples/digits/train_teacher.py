"""Train the digits teacher and write it as a chain source (a ``module`` directory).

    .venv/bin/python examples/digits/train_teacher.py --out runs/digits/teacher [--epochs 30]

Trains ``DigitsCNN(width=32)`` on the train split of scikit-learn's digits (the chain's ``digits`` dataset;
the validation, calibration and held-out splits are never seen), then optimize it:

    optiserve optimize runs/digits/teacher --recipe examples/digits/recipe.yaml --out runs/digits/package
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from optimizers.datasets import digits, digits_train_labels  # noqa: E402
from optimizers.modules import ModuleSpec, build_module, save_module  # noqa: E402

HERE = Path(__file__).resolve().parent
SPEC = ModuleSpec(
    code="model.py",
    cls="DigitsCNN",
    kwargs={"width": 32, "hidden": 64},
    input_name="pixels",
    input_shape=(1, 8, 8),
    labels=tuple(str(d) for d in range(10)),
)


def train_teacher(out: Path, epochs: int = 30, seed: int = 0) -> float:
    """Train and save the teacher; returns its accuracy on the held-out split."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    data = digits()
    x = torch.from_numpy(np.stack(data.train))
    y = torch.from_numpy(digits_train_labels()).long()
    model = build_module(HERE, SPEC)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(np.stack(data.heldout))).argmax(1).numpy()
    save_module(model, SPEC, HERE, out)
    return float((predicted == data.heldout_labels).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "digits" / "teacher")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    accuracy = train_teacher(args.out, args.epochs)
    print(f"teacher written to {args.out}; held-out accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
