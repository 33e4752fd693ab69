"""`srvgg`: compact super-resolution, 2x / 3x / 4x (`--set scale=N`), Real-ESRGAN's SRVGGNetCompact
(Wang et al. 2021) trained with an L1 loss (Real-ESRNet's stage, without the GAN).

Why this network on CPUs: its body runs entirely at the input's resolution and ends in a
PixelShuffle, so a 4x model spends 1/16 of the FLOPs per output pixel that a same-size restorer
(nafnet at the output size) would; the untrained net is bicubic upscaling (zero-initialised last
conv over a bicubic residual), so every step is measured against the baseline that matters.
Batches: `input` (N, 3, S, S) and `target` (N, 3, scale*S, scale*S), both in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from translator.config import TrainConfig
from translator.losses import check_loss, pixel_and_l1
from translator.nets.srvgg import SRVGGNetCompact
from translator.variants.base import Smoke, Variant

SCALES = (2, 3, 4)


@dataclass
class SRVGGConfig(TrainConfig):
    scale: int = 4  # output size / input size: 2, 3 or 4 (the dataset's manifest scale must match)
    num_feat: int = 32  # body channels (the reference's 64: 4x the FLOPs)
    num_conv: int = 8  # body convs (the reference's 16 / 32)
    loss: str = "l1"  # a key of translator.losses.PIXEL_LOSSES
    lr: float = 5e-4
    beta1: float = 0.9
    lr_policy: str = "cosine"
    batch_size: int = 16
    image_size: int = 32  # the LOW-resolution crop; its target is scale times larger
    augment: str = "d4"
    ema_decay: float = 0.999

    def validate(self):
        super().validate()
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if self.num_feat < 1 or self.num_conv < 0:
            raise ValueError(f"num_feat must be at least 1 and num_conv at least 0, got {self.num_feat}, "
                             f"{self.num_conv}")
        check_loss(self.loss)


class SRVGG(Variant):
    name = "srvgg"
    paired = True
    Config = SRVGGConfig
    smoke = Smoke({"num_feat": 8, "num_conv": 2, "scale": 2, "ema_decay": 0.0}, fit_loss="l1")

    def __init__(self, config, *args, **kwargs):
        self.scale = int(config.scale)  # per instance: the descriptor's and the dry run's scale
        super().__init__(config, *args, **kwargs)

    def build_networks(self):
        c = self.config
        return {"G": SRVGGNetCompact(scale=c.scale, num_feat=c.num_feat, num_conv=c.num_conv)}

    def build_optimizers(self):
        c = self.config
        return {"G": torch.optim.Adam(self.nets["G"].parameters(), lr=c.lr, betas=(c.beta1, 0.99))}

    def train_step(self, batch):
        loss, l1 = pixel_and_l1(self.config.loss, self.nets["G"](batch["input"]), batch["target"])
        self.optimize("G", loss)
        return {"loss": loss.detach(), "l1": l1.detach()}
