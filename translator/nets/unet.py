"""U-Net generator of pix2pix (Isola et al.), built exactly like the reference implementation
(junyanz/pytorch-CycleGAN-and-pix2pix) so parameter counts match it to the unit."""

from __future__ import annotations

import torch
from torch import nn

from translator.nets.common import init_normal, norm_layer, uses_bias


class UnetBlock(nn.Module):
    """One level of the U: down, the inner levels, up, and the skip (concatenation)."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm="batch", dropout=False):
        super().__init__()
        self.outermost = outermost
        make_norm, bias = norm_layer(norm), uses_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [downrelu, downconv, uprelu, upconv, make_norm(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [downrelu, downconv, make_norm(inner_nc), submodule, uprelu, upconv,
                      make_norm(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """`num_downs` halvings down to 1x1: unet_256 has 8, unet_128 has 7 (inputs must be a
    multiple of 2**num_downs; translator.tiling pads for you)."""

    def __init__(self, in_channels=3, out_channels=3, num_downs=8, ngf=64, norm="batch",
                 dropout=True):
        super().__init__()
        if num_downs < 5:
            raise ValueError("a U-Net needs at least 5 downsamplings (unet_32)")
        self.multiple = 2**num_downs
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = UnetBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetBlock(out_channels, ngf, input_nc=in_channels, submodule=block,
                               outermost=True, norm=norm)
        init_normal(self)

    def forward(self, x):
        return self.model(x)


UNETS = ("unet_256", "unet_128", "unet_64", "unet_32")  # netG values; each takes multiples of its size


def unet_depth(name: str) -> int:
    """`unet_256` -> 8 downsamplings, `unet_128` -> 7, ... `unet_32` -> 5."""
    try:
        size = int(name.removeprefix("unet_"))
    except ValueError:
        raise ValueError(f"unknown U-Net {name!r}: use unet_256, unet_128, unet_64 or unet_32") from None
    depth = size.bit_length() - 1
    if not name.startswith("unet_") or 2**depth != size or depth < 5:
        raise ValueError(f"unknown U-Net {name!r}: use unet_256, unet_128, unet_64 or unet_32")
    return depth
