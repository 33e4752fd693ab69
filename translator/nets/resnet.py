"""ResNet generator of CycleGAN (Johnson et al. style), as in the reference implementation."""

from __future__ import annotations

from torch import nn

from translator.nets.common import init_normal, norm_layer, uses_bias


class ResnetBlock(nn.Module):
    def __init__(self, dim, norm="instance", dropout=False):
        super().__init__()
        make_norm, bias = norm_layer(norm), uses_bias(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    multiple = 4

    def __init__(self, in_channels=3, out_channels=3, ngf=64, n_blocks=9, norm="instance",
                 dropout=False):
        super().__init__()
        make_norm, bias = norm_layer(norm), uses_bias(norm)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), make_norm(ngf),
                  nn.ReLU(True)]
        for i in range(2):  # two stride-2 downsamplings
            mult = 2**i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm=norm, dropout=dropout) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       make_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, x):
        return self.model(x)
