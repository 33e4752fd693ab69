"""`autoencoder`: the original img2img encoder-decoder translator, trained with an L2 loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from translator.config import TrainConfig
from translator.nets.dcgan import EncoderDecoder
from translator.variants.base import Variant


@dataclass
class AutoencoderConfig(TrainConfig):
    nf: int = 64  # filters of the first encoder conv (64-128-256-512)
    loss: str = "l2"  # l2 as in the article, or l1
    batch_size: int = 64
    image_size: int = 64

    def validate(self):
        super().validate()
        if self.loss not in ("l1", "l2"):
            raise ValueError("loss must be l1 or l2")


class Autoencoder(Variant):
    name = "autoencoder"
    paired = True
    Config = AutoencoderConfig

    def build_networks(self):
        return {"G": EncoderDecoder(nf=self.config.nf)}

    def build_optimizers(self):
        c = self.config
        return {"G": torch.optim.Adam(self.nets["G"].parameters(), lr=c.lr, betas=(c.beta1, 0.999))}

    def train_step(self, batch):
        fake = self.nets["G"](batch["input"])
        loss_fn = F.mse_loss if self.config.loss == "l2" else F.l1_loss
        loss = loss_fn(fake.float(), batch["target"].float())
        self.optimize("G", loss)
        return {"loss": loss.detach()}
