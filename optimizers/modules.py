"""Plain PyTorch models (not Hugging Face), as the chain's ``module`` format: a directory with

    module.json        {"code": "model.py", "class": "DigitsCNN", "kwargs": {...},
                        "input": {"name": "pixels", "shape": [1, 8, 8]}, "labels": ["0", ..., "9"],
                        "image": {...}}   (optional: an image classifier's preprocessing, modelpkg ImageSpec)
    model.py           the class's source (the directory carries its own code)
    model.safetensors  the weights (never a pickle)

Only the optimizer loads these (to export, distill and as the fidelity reference); packages carry ONNX, so the
server never runs model code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelpkg.manifest import ImageSpec

MODULE_FILE = "module.json"


@dataclass(frozen=True)
class ModuleSpec:
    code: str
    cls: str
    kwargs: dict[str, Any]
    input_name: str
    input_shape: tuple[int, ...]
    labels: tuple[str, ...]
    image: ImageSpec | None = None  # an image classifier: how an encoded image becomes its input

    def __post_init__(self) -> None:
        if self.image is not None and tuple(self.input_shape) != (3, *self.image.size):
            raise ValueError(
                f"input shape {list(self.input_shape)} is not what the stated image steps make: {[3, *self.image.size]}"
            )

    @classmethod
    def read(cls, root: Path) -> ModuleSpec:
        raw = json.loads((root / MODULE_FILE).read_text())
        return cls(
            code=raw["code"],
            cls=raw["class"],
            kwargs=raw.get("kwargs", {}),
            input_name=raw["input"]["name"],
            input_shape=tuple(raw["input"]["shape"]),
            labels=tuple(raw["labels"]),
            image=ImageSpec.model_validate(raw["image"]) if raw.get("image") else None,
        )

    def write(self, root: Path) -> None:
        raw = {
            "code": self.code,
            "class": self.cls,
            "kwargs": self.kwargs,
            "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "labels": list(self.labels),
            **({"image": self.image.model_dump(mode="json")} if self.image else {}),
        }
        (root / MODULE_FILE).write_text(json.dumps(raw, indent=2) + "\n")


def build_module(root: Path, spec: ModuleSpec | None = None) -> Any:
    """Instantiate the class ``spec`` names (default: the directory's own) from ``root``'s code, untrained."""
    spec = spec or ModuleSpec.read(root)
    code = root / spec.code
    name = "optiserve_module_" + hashlib.sha256(code.read_bytes()).hexdigest()[:16]
    loader = importlib.util.spec_from_file_location(name, code)
    if loader is None or loader.loader is None:
        raise ImportError(f"cannot load {code}")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return getattr(module, spec.cls)(**spec.kwargs)


def load_module(root: Path) -> Any:
    """The trained model in ``root``, in eval mode."""
    from safetensors.torch import load_file

    model = build_module(root)
    model.load_state_dict(load_file(str(root / "model.safetensors")))
    return model.eval()


def save_module(model: Any, spec: ModuleSpec, code_from: Path, root: Path) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    if (code_from / spec.code).resolve() != (root / spec.code).resolve():
        shutil.copy2(code_from / spec.code, root / spec.code)
    spec.write(root)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))


class ModuleRuntime:
    """Runs a ``module`` directory with torch on CPU (the optimizer's reference for tensor models)."""

    name = "torch-module"
    device = "cpu"

    def __init__(self, root: Path, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = load_module(root)

    def run_array(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(inputs))).float().numpy()
