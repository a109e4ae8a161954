"""An example network of your own: a small CNN with BatchNorm, a residual add and a depthwise-separable
convolution, every layer following the width h. Nothing in neumeta_core knows it.

    neumeta train --model examples/separable.py:build --dataset digits --out separable.pt
"""

import torch
from torch import nn


class Separable(nn.Module):
    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        # depthwise 3x3 then pointwise 1x1, added back onto its input
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.pointwise = nn.Conv2d(width, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.bn(self.pointwise(self.depthwise(x))))
        x = torch.relu(self.down(x))
        return self.head(x.mean(dim=(2, 3)))


def build(width: int) -> nn.Module:
    return Separable(width)
