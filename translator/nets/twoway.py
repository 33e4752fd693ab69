"""Both generators of an unpaired model (CycleGAN's G_A/G_B, DualGAN's G_A/G_B) as one module,
so a registered model can be served in both directions.

Zhu et al. 2017 (CycleGAN) and Yi et al. 2017 (DualGAN): G_A maps domain A to B, G_B maps B to A.
"""

from __future__ import annotations

import torch
from torch import nn


class TwoWayGenerator(nn.Module):
    """`forward(x)` is A->B (`AtoB`, i.e. G_A); `BtoA` (G_B) is the reverse.

    Input/output: float NCHW in [-1, 1], 3 channels, H and W multiples of `multiple`.
    """

    def __init__(self, AtoB: nn.Module, BtoA: nn.Module):  # noqa: N803 (field-standard names)
        super().__init__()
        self.AtoB, self.BtoA = AtoB, BtoA
        self.multiple = max(int(getattr(AtoB, "multiple", 1)), int(getattr(BtoA, "multiple", 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.AtoB(x)

    def direction(self, name: str) -> nn.Module:
        """'AtoB' or 'BtoA' -> that generator. Raises ValueError for anything else."""
        if name not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be AtoB or BtoA, not {name!r}")
        return self.AtoB if name == "AtoB" else self.BtoA
