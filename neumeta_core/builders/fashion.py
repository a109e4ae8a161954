"""The Fashion-MNIST network (28x28 grayscale, 10 classes): every layer follows the width h.

    conv(1->h) -> conv(h->h) -> maxpool -> conv(h->2h) -> maxpool -> conv(2h->3h) -> global average -> linear(3h->10)

3x3 convolutions, each followed by BatchNorm and ReLU. At h = 32: 84,650 parameters. Chosen by measurement
(docs/results/fashion_mnist/notebook.md, "design"): with three epochs on one core it scored 89.2 % against 87.6 %
for conv(1->h) -> pool -> conv(h->2h) -> pool -> conv(2h->4h) (94,186 parameters), at 1.6x its time: the second
convolution at full resolution buys more than a wider last layer. The input is the pixels divided by 255,
float32 (batch, 1, 28, 28): there is no other preprocessing, so the exported graph holds all of it.
"""

from __future__ import annotations

import torch
from torch import nn

from neumeta_core.builders.digits import ConvBN


class FashionNet(nn.Module):
    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = ConvBN(1, width)
        self.conv2 = ConvBN(width, width)
        self.conv3 = ConvBN(width, 2 * width)
        self.conv4 = ConvBN(2 * width, 3 * width)
        self.fc = nn.Linear(3 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28), pixels / 255
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv3(x)), 2)
        x = torch.relu(self.conv4(x))
        return self.fc(x.mean(dim=(2, 3)))


def fashion(width: int) -> nn.Module:
    return FashionNet(width)
