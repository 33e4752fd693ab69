"""70x70 PatchGAN discriminator (pix2pix/CycleGAN reference); also the DualGAN critic."""

from __future__ import annotations

from torch import nn

from translator.nets.common import init_normal, norm_layer, uses_bias


class PatchDiscriminator(nn.Module):
    """Outputs a map of real/fake logits, one per overlapping 70x70 patch (n_layers=3)."""

    def __init__(self, in_channels=3, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        make_norm, bias = norm_layer(norm), uses_bias(norm)
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, x):
        return self.model(x)
