"""`autoencoder`: the original img2img encoder-decoder translator, trained with an L2 loss
(`loss`: any key of `translator.losses.PIXEL_LOSSES`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from translator.config import TrainConfig
from translator.losses import check_loss, pixel_loss
from translator.nets.dcgan import EncoderDecoder
from translator.variants.base import Smoke, Variant


@dataclass
class AutoencoderConfig(TrainConfig):
    nf: int = 64  # filters of the first encoder conv (64-128-256-512)
    loss: str = "l2"  # l2 as in the article; any key of translator.losses.PIXEL_LOSSES
    batch_size: int = 64
    image_size: int = 64

    def validate(self):
        super().validate()
        check_loss(self.loss)


class Autoencoder(Variant):
    name = "autoencoder"
    paired = True
    Config = AutoencoderConfig
    smoke = Smoke({"nf": 8}, fit_loss="loss")

    def build_networks(self):
        return {"G": EncoderDecoder(nf=self.config.nf)}

    def build_optimizers(self):
        c = self.config
        return {"G": torch.optim.Adam(self.nets["G"].parameters(), lr=c.lr, betas=(c.beta1, 0.999))}

    def train_step(self, batch):
        fake = self.nets["G"](batch["input"])
        loss = pixel_loss(self.config.loss)(fake.float(), batch["target"].float())
        self.optimize("G", loss)
        return {"loss": loss.detach()}
