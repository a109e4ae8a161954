"""The digits networks (8x8 images, 10 classes), each a function of the width h."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """A conv followed by BatchNorm (the service folds it away)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DigitsNet(nn.Module):
    """conv(1->h) -> conv(h->h) -> maxpool -> conv(h->2h) -> GAP -> linear(2h->10), BatchNorm and ReLU
    after each conv (method notes section 10): every layer follows h."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = ConvBN(1, width)
        self.conv2 = ConvBN(width, width)
        self.conv3 = ConvBN(width, 2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class MorphBlock(nn.Module):
    """Residual block with a variable hidden width: relu(x + conv_b(relu(conv_a(x))))."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(channels, width, 3, padding=1)
        self.conv_b = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv_b(torch.relu(self.conv_a(x))))


class DigitsCNN(nn.Module):
    """The paper's ResNet20 setting in small: a fixed stem and classifier around one residual block whose
    hidden width h follows the width; no BatchNorm."""

    def __init__(self, width: int, stem: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, stem, 3, padding=1)
        self.conv2 = nn.Conv2d(stem, stem, 3, padding=1)
        self.block = MorphBlock(stem, width)
        self.fc = nn.Linear(stem, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(self.block(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    """64 pixels -> h -> 10: both layers follow h."""

    def __init__(self, width: int, classes: int = 10, inputs: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, width)
        self.fc2 = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def digits_full(width: int) -> nn.Module:
    return DigitsNet(width)


def digits_cnn(width: int) -> nn.Module:
    return DigitsCNN(width)


def mlp(width: int) -> nn.Module:
    return MLP(width)
