"""SRVGGNetCompact (Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCVW 2021; reference: xinntao/Real-ESRGAN `realesrgan/archs/srvgg_arch.py`).

A plain VGG-style body at the LOW resolution (every conv runs on the input's pixels, so the cost
per output pixel falls as 1/scale**2), a last conv to 3*scale**2 channels and a PixelShuffle to
the output size, plus an upsampled copy of the input as the residual base. The reference adds a
nearest upsample; here it is bicubic, and the last conv starts at zero, so the untrained net is
exactly bicubic upscaling (the baseline every SR score is compared with) and training can only move
away from it where that lowers the loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SRVGGNetCompact(nn.Module):
    """(N, in_channels, H, W) float in [-1, 1] -> (N, out_channels, scale*H, scale*W), roughly in
    [-1, 1] (not clamped: a residual on bicubic may overshoot slightly). Any H and W (no size
    multiple: `multiple` is 1).

    Args:
        scale: whole output/input size ratio (2, 3, 4...).
        num_feat: channels of the body (the reference's 64; 16-32 for CPUs).
        num_conv: 3x3 convs in the body after the first (the reference's 16 for x4 anime, 32 general).
        in_channels, out_channels: 3 for RGB.
    """

    multiple = 1

    def __init__(self, scale: int = 4, num_feat: int = 64, num_conv: int = 16, in_channels: int = 3,
                 out_channels: int = 3):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(num_feat, out_channels * scale * scale, 3, padding=1)
        self.upsampler = nn.PixelShuffle(scale)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x):
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.upsampler(self.last(self.body(x))) + base
