"""Small helpers shared by the network files."""

from __future__ import annotations

import functools

from torch import nn


def norm_layer(kind: str):
    """`batch` | `instance` | `none` -> a callable taking the channel count.

    Instance norm follows the pix2pix/CycleGAN reference: no affine, no running stats.
    """
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use batch, instance or none")


def uses_bias(kind: str) -> bool:
    """Convs before a batch norm need no bias; the reference keeps it for instance norm."""
    return kind != "batch"


def init_normal(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN / pix2pix initialisation: conv weights N(0, std), norm weights N(1, std)."""
    for m in module.modules():
        name = type(m).__name__
        if name.startswith("Conv") and hasattr(m, "weight"):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif name.startswith("BatchNorm") and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
