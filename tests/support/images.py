"""Small random-weight image classifiers built from configs, and image files to send them: what the image tests
optimize and serve. A random network's logits barely move from one image to the next, so each head is scaled up
until the top label depends on the image (else top-1 agreement would be meaningless)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = 12
SIZE = 32  # the models' input side: small enough for a fast test, large enough to resize and crop


def _scale_head(model, weight) -> None:
    import torch

    with torch.no_grad():
        weight.normal_(0.0, 1.0)
        weight.mul_(8.0 / max(float(weight.std()), 1e-6))
    model.eval()


def _save(model, processor, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root, safe_serialization=True)
    processor.save_pretrained(root)
    return root


def tiny_resnet(root: Path) -> Path:
    """A 2-stage ResNet with ConvNext's processor (resize the short side to SIZE / 0.875, crop SIZE, bicubic)."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=LABELS,
        id2label={i: f"class-{i}" for i in range(LABELS)}, label2id={f"class-{i}": i for i in range(LABELS)},
    )  # fmt: skip
    model = ResNetForImageClassification(config)
    _scale_head(model, model.classifier[1].weight)
    return _save(model, ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875), root)


def tiny_vit(root: Path) -> Path:
    """A 2-layer ViT on 8x8 patches with ViT's processor (warp to SIZE x SIZE, bilinear)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(1)
    config = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=LABELS,
    )  # fmt: skip
    model = ViTForImageClassification(config)
    _scale_head(model, model.classifier.weight)
    return _save(model, ViTImageProcessor(size={"height": SIZE, "width": SIZE}), root)


def photo(seed: int, size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    """A smooth random picture (gradients and blobs, so resizing matters), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [
        np.sin(x * rng.uniform(2, 12) + rng.uniform(0, 6)) + np.cos(y * rng.uniform(2, 12) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    pixels = ((np.stack(channels, axis=-1) + 2) * 63.75).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image.convert(mode) if mode != "RGB" else image


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def labels_of(root: Path) -> list[str]:
    config = json.loads((root / "config.json").read_text())
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


CNN_CODE = '''"""A small CNN image classifier (a stand-in for a torchvision or timm model exported as a module file)."""

import torch


class SmallCNN(torch.nn.Module):
    def __init__(self, labels: int = 12) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(16, labels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).flatten(1))
'''


def small_cnn_module(root: Path, wrap: str | None = None) -> Path:
    """A plain PyTorch module directory (optimizers.modules) that states its preprocessing: ImageNet's mean and
    std after a bilinear resize of the short side to 40 and a 32x32 centre crop. ``wrap``: code of a module file to
    use instead (e.g. one building a torchvision model), whose class takes ``labels``."""
    import torch
    from safetensors.torch import save_file

    from modelpkg.manifest import ImageSpec
    from optimizers.modules import ModuleSpec, build_module

    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(wrap or CNN_CODE)
    spec = ModuleSpec(
        code="model.py", cls="SmallCNN", kwargs={"labels": LABELS}, input_name="pixels",
        input_shape=(3, SIZE, SIZE), labels=tuple(f"kind-{i}" for i in range(LABELS)),
        image=ImageSpec(
            processor="stated: resize the short side to 40 (bilinear), crop 32, ImageNet mean/std",
            shortest_edge=40, resample="bilinear", crop=(SIZE, SIZE),
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        ),
    )  # fmt: skip
    torch.manual_seed(2)
    model = build_module(root, spec)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    _scale_head(model, last.weight)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    spec.write(root)
    return root
