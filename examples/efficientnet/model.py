"""EfficientNet-Lite0 (ImageNet, 1,000 labels) as a module file for optiserve's ``module`` format: the architecture
from the ``efficientnet-lite-pytorch`` package, plain torch (no torchvision)."""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet


def EfficientNetLite0() -> torch.nn.Module:  # noqa: N802 -- module.json names it as a class
    return EfficientNet.from_name("efficientnet-lite0")
