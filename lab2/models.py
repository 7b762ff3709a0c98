"""Models and the name -> constructor registry.

Models never call `.cuda()` or `.half()`: placement and precision belong to Accelerate.
Every constructor takes `num_classes`, so the head follows the data set.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lab2.errors import UserError


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SimpleCNN(nn.Module):
    """The course lab's SimpleCNN, exactly: 4,441,482 parameters, 161,163,264 FLOPs per 32x32 sample.

    conv3x3 3->32, 32->64 at 32x32, maxpool; conv3x3 64->128, 128->128 at 16x16,
    maxpool; each conv followed by BatchNorm and ReLU; then Linear 8192->512,
    ReLU, Dropout 0.5, Linear 512->num_classes.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(3, 32),
            *_conv_block(32, 64),
            nn.MaxPool2d(2),  # 32x32 -> 16x16
            *_conv_block(64, 128),
            *_conv_block(128, 128),
            nn.MaxPool2d(2),  # 16x16 -> 8x8
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 8 * 8, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
}


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build the registered model `name`; an unknown name is a UserError listing the choices."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise UserError(f"unknown --model {name!r}; choose one of: {', '.join(sorted(MODELS))}.") from None
    return constructor(num_classes=num_classes)
