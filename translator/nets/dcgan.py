"""The encoder-decoder translator of the original img2img article.

Encoder = the DCGAN discriminator without its last layer (5x5 stride-2 convs, leaky ReLU 0.2,
batch norm on all but the first); decoder = the DCGAN generator (5x5 stride-2 transposed convs,
batch norm + ReLU, tanh out). No fully connected bottleneck, so any size divisible by 16 works.
"""

from __future__ import annotations

from torch import nn

from translator.nets.common import init_normal


class EncoderDecoder(nn.Module):
    multiple = 16

    def __init__(self, in_channels: int = 3, out_channels: int = 3, nf: int = 64):
        super().__init__()
        chans = [nf, nf * 2, nf * 4, nf * 8]
        enc: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(chans):
            enc.append(nn.Conv2d(prev, c, 5, stride=2, padding=2, bias=i == 0))
            if i > 0:
                enc.append(nn.BatchNorm2d(c))
            enc.append(nn.LeakyReLU(0.2, inplace=True))
            prev = c
        dec: list[nn.Module] = []
        for c in reversed(chans[:-1]):
            dec += [
                nn.ConvTranspose2d(prev, c, 5, stride=2, padding=2, output_padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            prev = c
        dec += [nn.ConvTranspose2d(prev, out_channels, 5, stride=2, padding=2, output_padding=1), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        init_normal(self)

    def forward(self, x):
        return self.decoder(self.encoder(x))
