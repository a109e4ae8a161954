"""Our own networks, each one `build(width)` function through the same generic path as a user's
(neumeta_core.structure), with the recipe each is trained with. Importable without torch: the command line
and the service's settings read the names and the bundled files from here.

- digits_full: every layer follows h (the whole network generated; the default bundle);
- digits_cnn: a fixed stem and classifier around one residual block whose hidden width is h;
- mlp: 64 pixels -> h -> 10;
- resnet20: CIFAR ResNet20, the last block's hidden width h (the paper's setting);
- resnet20_stage3: every block of stage 3 follows h (the whole-network follow-up's setting);
- fashion: a Fashion-MNIST CNN in which every layer follows h (the benchmark, docs/results/fashion_mnist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neumeta_core.names import CHECKPOINTS

FASHION = CHECKPOINTS / "fashion.pt"  # Fashion-MNIST, every layer generated: the default model
BUNDLED = CHECKPOINTS / "digits_full.pt"  # 8x8 digits, every layer generated: what the tests serve
BLOCK = CHECKPOINTS / "digits_cnn.pt"  # the first bundle: only the residual block
BUNDLES: dict[str, Path] = {"fashion": FASHION, "digits_full": BUNDLED, "digits_cnn": BLOCK}
# what `neumeta serve` loads unless NEUMETA_CHECKPOINTS says otherwise, the first the default model
SERVED = (FASHION, BUNDLED)

# name -> (module:function, data set, target fields, hypernetwork fields, training fields)
Recipe = tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any]]
RECIPES: dict[str, Recipe] = {
    # every layer generated; h = 8 (gamma 0.75) below the trained widths 10..32, as in the paper. The
    # whole-network recipe: no distillation, task lr 1e-3, K = 4 weight sets on a lattice at inference, one
    # function of position for every width (docs/results/experiments.md)
    "digits_full": (
        "neumeta_core.builders.digits:digits_full",
        "digits",
        {"train_min_width": 10, "min_width": 8},
        {"hidden": 128, "centred": True, "sizes": False},
        {"lr": 1e-3, "kd_weight": 0.0, "samples": 4, "quadrature": "lattice"},
    ),
    "digits_cnn": ("neumeta_core.builders.digits:digits_cnn", "digits", {}, {}, {}),
    "mlp": ("neumeta_core.builders.digits:mlp", "digits", {}, {}, {}),
    # CIFAR-10: the usual ResNet20 schedule for the teacher and the individual nets (SGD 0.1, 200 epochs,
    # batch 128, wd 5e-4); h in 32..64 trained, h = 16 (gamma 0.75) never seen
    "resnet20": (
        "neumeta_core.builders.resnet:resnet20",
        "cifar10",
        {"max_width": 64, "train_min_width": 32, "train_stride": 1, "min_width": 8},
        {},
        {
            "batch_size": 128,
            "pretrain_epochs": 200,
            "pretrain_lr": 0.1,
            "pretrain_optimizer": "sgd",
            "pretrain_weight_decay": 5e-4,
            "warm_steps": 4000,
            "steps": 60_000,
        },
    ),
}
# Fashion-MNIST (docs/results/fashion_mnist/notebook.md): the grid hypernetwork (a learned full-width tensor per
# layer, area-resampled to each width, plus the MLPs' correction) starts at the smoothed teacher and is trained by
# the sandwich rule with in-place distillation for 20 epochs, the cells' jitter falling to a quarter except at the
# smallest trained width, which keeps it whole; every width of 10..32 is drawn but 27 and 13, kept out to measure the
# widths between trained ones (run F18); h = 8 (gamma 0.75) lies below the trained range. Each width's BatchNorm
# statistics are measured on 2,048 training images, as the slimmable baseline recalibrates (run F18b)
RECIPES["fashion"] = (
    "neumeta_core.builders.fashion:fashion",
    "idx",
    {"train_min_width": 10, "train_stride": 1, "held_out": (27, 13), "min_width": 8},
    {"hidden": 128, "centred": True, "sizes": False, "grid": True},
    {
        "batch_size": 128,
        "pretrain_epochs": 15,
        "warm_steps": 0,
        "slim_epochs": 20,
        "noise_end": 0.25,
        "full_noise_smallest": True,
        "lr": 1e-3,
        "kd_weight": 0.0,
        "samples": 4,
        "quadrature": "lattice",
        "statistics_images": 2048,
    },
)
RECIPES["resnet20_stage3"] = ("neumeta_core.builders.resnet:resnet20_stage3", *RECIPES["resnet20"][1:])
NAMES = tuple(RECIPES)
DEFAULT = "digits_full"
