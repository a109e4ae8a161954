"""ResNet20 in the CIFAR layout (16/32/64 channels, three blocks per stage, 1x1 conv shortcuts), with
BatchNorm after every conv. The blocks named follow the width in their hidden channels
(conv1 cin -> h, conv2 h -> 64): the last block is the paper's setting, all of stage 3 the follow-up's."""

from __future__ import annotations

import torch
from torch import nn

from neumeta_core.builders.digits import ConvBN

STAGES = (16, 32, 64)
BLOCKS = 3  # per stage: 6n + 2 = 20 layers


class Block(nn.Module):
    """relu(shortcut(x) + conv2(relu(conv1(x)))); the shortcut is a 1x1 conv where the shape changes."""

    def __init__(self, cin: int, width: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, width, 3, stride)
        self.conv2 = ConvBN(width, cout, 3, 1)
        self.shortcut = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(skip + self.conv2(torch.relu(self.conv1(x))))


class ResNet20(nn.Module):
    def __init__(self, width: int, morph: set[str], classes: int = 10) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, STAGES[0], 3, 1)
        cin, stages = STAGES[0], []
        for s, cout in enumerate(STAGES):
            blocks = []
            for b in range(BLOCKS):
                hidden = width if f"layer{s + 1}.{b}" in morph else cout
                blocks.append(Block(cin, hidden, cout, 2 if b == 0 and s > 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGES[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32)
        x = torch.relu(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def resnet20(width: int) -> nn.Module:
    return ResNet20(width, {"layer3.2"})


def resnet20_stage3(width: int) -> nn.Module:
    return ResNet20(width, {f"layer3.{b}" for b in range(BLOCKS)})
