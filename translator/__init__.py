"""Pure-PyTorch image-to-image translators: variants, networks, losses, degradations, metrics,
image conversion and tiled inference. Nothing here knows about Ray, MLflow or object storage."""

import typing
from typing import Literal

__version__ = "0.1.0"

# Tile edge and overlap (pixels) wherever full images are run: validation, `img2img eval`, the
# endpoint (serving/options.py) and --local; one pair, so every path scores the same way. Here,
# not in tiling.py, so the CLI can read them without importing torch.
TILE, OVERLAP = 512, 32

# How a loaded generator runs (translator/runtime.py); here too, so option parsing needs no torch.
RuntimeName = Literal["auto", "torch", "onnx"]
MemoryFormat = Literal["channels_last", "contiguous"]
Precision = Literal["auto", "fp32", "bf16"]
RUNTIMES, MEMORY_FORMATS, PRECISIONS = (typing.get_args(t) for t in (RuntimeName, MemoryFormat, Precision))
