"""ResNet20 in the CIFAR layout (16/32/64 channels, three blocks per stage, 1x1 conv shortcuts).

Pretrained with BatchNorm, then folded (method notes section 5): every conv carries a bias and no
normalisation is left, which is the network the hypernetwork generates into. The last
`generated_blocks` blocks of stage 3 have a variable hidden width h (conv1 cin -> h, conv2 h -> 64):
1 is the paper's setting (`layer3.2`), 3 generates the whole of stage 3 (the follow-up's setting).
With `skip_init` each generated block's residual branch is scaled by a learnable scalar gate,
the follow-up's SkipInit replacement for BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from neumeta_core.config import TargetConfig
from neumeta_core.errors import InputError

Group = dict[str, int]
STAGES = (16, 32, 64)
BLOCKS = 3  # per stage: 6n + 2 = 20 layers


class ConvBN(nn.Module):
    """A conv followed by BatchNorm while pretraining; once folded, a conv with a bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=not bn)
        self.bn: nn.Module = nn.BatchNorm2d(cout) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Block(nn.Module):
    """relu(shortcut(x) + gate * conv2(relu(conv1(x)))); the shortcut is a 1x1 conv where the shape changes."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, bn: bool, gated: bool, constant: bool) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, width, 3, stride, bn)
        self.conv2 = ConvBN(width, cout, 3, 1, bn)
        self.shortcut = ConvBN(cin, cout, 1, stride, bn) if stride != 1 or cin != cout else None
        self.gate: torch.Tensor | None
        if gated and constant:  # pretraining: the gate is a constant 1 that folding carries over
            self.register_buffer("gate", torch.ones(()))
        else:
            self.gate = nn.Parameter(torch.ones(())) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(torch.relu(self.conv1(x)))
        if self.gate is not None:
            branch = self.gate * branch
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(skip + branch)


def block_names() -> list[str]:
    return [f"layer{s + 1}.{b}" for s in range(len(STAGES)) for b in range(BLOCKS)]


def generated_blocks(cfg: TargetConfig) -> list[str]:
    """The morphable blocks: the last `cfg.generated_blocks` of stage 3, in network order."""
    if not 1 <= cfg.generated_blocks <= BLOCKS:
        raise InputError(f"generated_blocks must be in 1..{BLOCKS}, not {cfg.generated_blocks}")
    return [f"layer3.{b}" for b in range(BLOCKS - cfg.generated_blocks, BLOCKS)]


class ResNet20(nn.Module):
    """`bn`: BatchNorm after every conv; `pretraining`: gates (if any) are constants, not parameters."""

    def __init__(self, cfg: TargetConfig, width: int, bn: bool = False, pretraining: bool = False) -> None:
        super().__init__()
        morph = set(generated_blocks(cfg))
        self.conv1 = ConvBN(3, STAGES[0], 3, 1, bn)
        cin, stages = STAGES[0], []
        for s, cout in enumerate(STAGES):
            blocks = []
            for b in range(BLOCKS):
                name = f"layer{s + 1}.{b}"
                hidden = width if name in morph else cout
                gated = cfg.skip_init and name in morph
                blocks.append(Block(cin, hidden, cout, 2 if b == 0 and s > 0 else 1, bn, gated, pretraining))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGES[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32)
        x = torch.relu(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


@torch.no_grad()
def fold(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the same network with every BatchNorm folded into its conv:
    W' = W * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta. Gates are 1."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, ConvBN):
            w, bn = module.conv.weight, module.bn
            b = module.conv.bias if module.conv.bias is not None else torch.zeros(w.shape[0])
            if isinstance(bn, nn.BatchNorm2d):
                assert bn.running_var is not None and bn.running_mean is not None
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w, b = w * scale.view(-1, 1, 1, 1), (b - bn.running_mean) * scale + bn.bias
            out[f"{name}.conv.weight"], out[f"{name}.conv.bias"] = w.detach().clone(), b.detach().clone()
        elif isinstance(module, Block) and module.gate is not None:
            out[f"{name}.gate"] = module.gate.detach().clone()
        elif isinstance(module, nn.Linear):
            out[f"{name}.weight"], out[f"{name}.bias"] = module.weight.detach().clone(), module.bias.detach().clone()
    return out


def per_channel(cfg: TargetConfig, conv: str) -> list[str]:
    """A conv's per-output-channel vectors: its bias, or with BatchNorm kept, the norm's scale and shift."""
    return [f"{conv}.bn.weight", f"{conv}.bn.bias"] if cfg.batchnorm else [f"{conv}.conv.bias"]


def shapes(cfg: TargetConfig, width: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name in generated_blocks(cfg):
        cin = STAGES[1] if name == "layer3.0" else STAGES[2]
        out[f"{name}.conv1.conv.weight"] = (width, cin, 3, 3)
        out.update({vec: (width,) for vec in per_channel(cfg, f"{name}.conv1")})
        out[f"{name}.conv2.conv.weight"] = (STAGES[2], width, 3, 3)
        out.update({vec: (STAGES[2],) for vec in per_channel(cfg, f"{name}.conv2")})
    return out


def _hidden(name: str, cfg: TargetConfig) -> Group:
    """A block's hidden channels (with BatchNorm kept, conv1's statistics follow them too)."""
    conv1 = f"{name}.conv1"
    stats = [f"{conv1}.bn.running_mean", f"{conv1}.bn.running_var"] if cfg.batchnorm else []
    vectors = per_channel(cfg, conv1)
    return {**dict.fromkeys([f"{conv1}.conv.weight", *vectors, *stats], 0), f"{name}.conv2.conv.weight": 1}


def hidden_groups(cfg: TargetConfig) -> dict[str, Group]:
    return {f"{name}.hidden": _hidden(name, cfg) for name in generated_blocks(cfg)}


def channel_groups(cfg: TargetConfig) -> dict[str, Group]:
    """Every block's hidden channels, and each stage's residual stream: the conv that starts the
    stage (stem or shortcut), every conv2 writing into it, every conv reading it, and for stage 3
    the classifier's inputs. The RGB input and the classes never move."""
    if cfg.batchnorm:
        raise InputError(
            "resnet20 with BatchNorm kept permutes the generated blocks' hidden channels only (--permute hidden)"
        )
    groups = {f"{name}.hidden": _hidden(name, cfg) for name in block_names()}
    writer = "conv1.conv"
    for s in range(len(STAGES)):
        stream: Group = {f"{writer}.weight": 0, f"{writer}.bias": 0}
        for b in range(BLOCKS):
            block = f"layer{s + 1}.{b}"
            if not (b == 0 and s > 0):  # a downsampling block reads the previous stage's stream
                stream[f"{block}.conv1.conv.weight"] = 1
            stream[f"{block}.conv2.conv.weight"] = 0
            stream[f"{block}.conv2.conv.bias"] = 0
        if s + 1 < len(STAGES):
            nxt = f"layer{s + 2}.0"
            stream[f"{nxt}.conv1.conv.weight"] = 1
            stream[f"{nxt}.shortcut.conv.weight"] = 1
            writer = f"{nxt}.shortcut.conv"
        else:
            stream["fc.weight"] = 1
        groups[f"stage{s + 1}.stream"] = stream
    return groups
