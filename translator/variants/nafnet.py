"""`nafnet` (Chen et al. 2022): a light modern restoration net, the default for enhancement.

Presets: `tiny` (CPU-friendly, the default), `width32` and `gopro` (the paper's GoPro config)
for GPU clusters. L1 loss (or the paper's PSNR loss), AdamW betas (0.9, 0.9), cosine decay; lr
1e-3 as in the paper, 2e-3 for `tiny` (PRESET_LR).
Defaults measured on 2 CPU cores (benchmarks/quality.py; docs/benchmarks.md): an EMA of the weights
(`ema_decay` 0.999) is what is validated and served, and crops are seen in all 8 orientations
(`augment=d4`, BasicSR's paired-restoration augmentation); together +0.74 dB on held-out
Gaussian-1.5 photos at 10 CPU-minutes (35.87 -> 36.61 dB, above the true-kernel Wiener filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from translator.config import TrainConfig
from translator.losses import check_loss, pixel_and_l1
from translator.nets.nafnet import NAFNet
from translator.variants.base import Smoke, Variant

PRESETS = {
    "tiny": dict(width=16, enc_blocks=[1, 1, 1, 1], middle_blocks=1, dec_blocks=[1, 1, 1, 1]),
    "width32": dict(width=32, enc_blocks=[1, 1, 1, 28], middle_blocks=1, dec_blocks=[1, 1, 1, 1]),
    "gopro": dict(width=64, enc_blocks=[1, 1, 1, 28], middle_blocks=1, dec_blocks=[1, 1, 1, 1]),
}

# Learning rate per preset: the paper's 1e-3 for its configs; 2e-3 for `tiny`, measured better at
# CPU budgets (10 min, held-out Gaussian 1.5: 36.61 -> 36.71 dB; blind mix: all three rows up).
PRESET_LR = {"tiny": 2e-3, "width32": 1e-3, "gopro": 1e-3}


@dataclass
class NAFNetConfig(TrainConfig):
    preset: str = "tiny"  # tiny | width32 | gopro; explicit sizes below override it
    width: int | None = None
    enc_blocks: list[int] | None = None
    middle_blocks: int | None = None
    dec_blocks: list[int] | None = None
    loss: str = "l1"  # a key of translator.losses.PIXEL_LOSSES: l1, psnr (the paper's), charbonnier...
    lr: float | None = None  # None: the preset's (PRESET_LR)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.9
    lr_policy: str = "cosine"
    batch_size: int = 16
    image_size: int = 64
    augment: str = "d4"  # restoration does not care which way is up
    ema_decay: float = 0.999

    def __post_init__(self):
        if self.lr is None:
            self.lr = PRESET_LR.get(self.preset, 1e-3)

    def validate(self):
        super().validate()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown nafnet preset {self.preset!r}: use {', '.join(PRESETS)}")
        check_loss(self.loss)

    def architecture(self) -> dict:
        arch = dict(PRESETS[self.preset])
        for key in arch:
            if getattr(self, key) is not None:
                arch[key] = getattr(self, key)
        return arch


class NAFNetVariant(Variant):
    name = "nafnet"
    paired = True
    Config = NAFNetConfig
    smoke = Smoke({"width": 8}, fit_loss="l1")

    def build_networks(self):
        return {"G": NAFNet(3, **self.config.architecture())}

    def build_optimizers(self):
        c = self.config
        return {"G": torch.optim.AdamW(self.nets["G"].parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                       weight_decay=c.weight_decay)}

    def train_step(self, batch):
        loss, l1 = pixel_and_l1(self.config.loss, self.nets["G"](batch["input"]), batch["target"])
        self.optimize("G", loss)
        return {"loss": loss.detach(), "l1": l1.detach()}
