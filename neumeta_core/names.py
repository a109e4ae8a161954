"""What the command line and the service's settings name, importable without torch (a usage error or a bad
setting is answered in a fraction of a second, before the heavy imports)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
FORMATS = ("onnx", "safetensors")
DTYPES = ("float32", "float16", "int8")  # int8: ONNX only, quantised (export.quantize)
