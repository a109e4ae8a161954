"""What the command line and the service's settings name, importable without torch (a usage error or a bad
setting is answered in a fraction of a second, before the heavy imports)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
BUNDLED = CHECKPOINTS / "digits_full.pt"  # every layer generated: the default model
BLOCK = CHECKPOINTS / "digits_cnn.pt"  # the earlier bundle: only the residual block
FORMATS = ("onnx", "safetensors")
DTYPES = ("float32", "float16")
FAMILIES = ("digits_cnn", "digits_full", "mlp", "resnet20")  # neumeta_core.targets.FAMILIES (tested)
