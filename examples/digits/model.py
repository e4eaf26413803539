"""Two convolutional classifiers for scikit-learn's 8x8 digits: the teacher, and a smaller student the chain
distills it into. Plain PyTorch: the chain loads this file from the model directory (``optimizers.modules``)."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two conv blocks and a linear head; ``width`` sets the channels (teacher 32, student 8)."""

    def __init__(self, width: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))
