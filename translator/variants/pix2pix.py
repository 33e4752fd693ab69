"""`pix2pix` (Isola et al. 2017): U-Net generator + 70x70 PatchGAN on (input, output) pairs,
vanilla GAN loss + 100 x L1, D loss halved, Adam 2e-4/0.5, constant then linear LR decay.
`loss` picks the reconstruction term from `translator.losses.PIXEL_LOSSES` (default l1, the
paper's); it is logged as `loss_G_L1` and weighted by `lambda_l1` whichever it is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from translator.config import TrainConfig
from translator.losses import check_loss, gan_loss, pixel_loss
from translator.nets.patchgan import PatchDiscriminator
from translator.nets.unet import UNETS, UnetGenerator, unet_depth
from translator.variants.base import Smoke, Variant


@dataclass
class Pix2PixConfig(TrainConfig):
    SIZE_SETTINGS = {"netG": UNETS}

    netG: str = "unet_256"  # unet_256 | unet_128 | unet_64 | unet_32
    ngf: int = 64
    ndf: int = 64
    n_layers_D: int = 3
    norm: str = "batch"
    dropout: bool = True
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    loss: str = "l1"  # the reconstruction term: a key of translator.losses.PIXEL_LOSSES
    lr_policy: str = "linear"

    def validate(self):
        super().validate()
        unet_depth(self.netG)
        check_loss(self.loss)


class Pix2Pix(Variant):
    name = "pix2pix"
    paired = True
    Config = Pix2PixConfig
    smoke = Smoke({"netG": "unet_32", "ngf": 8, "ndf": 8}, fit_loss="loss_G_L1", fit={"dropout": False})

    def build_networks(self):
        c = self.config
        return {
            "G": UnetGenerator(3, 3, unet_depth(c.netG), c.ngf, c.norm, c.dropout),
            "D": PatchDiscriminator(6, c.ndf, c.n_layers_D, c.norm),
        }

    def build_optimizers(self):
        c = self.config
        adam = lambda net: torch.optim.Adam(net.parameters(), lr=c.lr, betas=(c.beta1, 0.999))  # noqa: E731
        return {"G": adam(self.nets["G"]), "D": adam(self.nets["D"])}

    def train_step(self, batch):
        real_a, real_b = batch["input"], batch["target"]
        G, D, mode = self.nets["G"], self.nets["D"], self.config.gan_mode
        fake_b = G(real_a)
        # D: real pairs -> 1, generated pairs -> 0; halved so D learns slower than G.
        self.set_requires_grad(["D"], True)
        loss_d = 0.5 * (gan_loss(D(torch.cat([real_a, fake_b.detach()], 1)), False, mode)
                        + gan_loss(D(torch.cat([real_a, real_b], 1)), True, mode))
        self.optimize("D", loss_d)
        # G: fool D, stay close to the target.
        self.set_requires_grad(["D"], False)
        loss_gan = gan_loss(self.frozen("D")(torch.cat([real_a, fake_b], 1)), True, mode)
        loss_l1 = pixel_loss(self.config.loss)(fake_b.float(), real_b.float())
        self.optimize("G", loss_gan + self.config.lambda_l1 * loss_l1)
        return {"loss_D": loss_d.detach(), "loss_G_GAN": loss_gan.detach(), "loss_G_L1": loss_l1.detach()}
