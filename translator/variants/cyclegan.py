"""`cyclegan` (Zhu et al. 2017), unpaired: G_A: A->B and G_B: B->A (ResNet, 9 blocks),
PatchGAN D_A (judges B) and D_B (judges A), LSGAN loss, cycle 10/10, identity 0.5, pool of 50."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from translator.config import TrainConfig
from translator.losses import ImagePool, gan_loss
from translator.nets.patchgan import PatchDiscriminator
from translator.nets.resnet import ResnetGenerator
from translator.variants.base import Smoke, Variant


@dataclass
class CycleGANConfig(TrainConfig):
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_D: int = 3
    norm: str = "instance"
    gan_mode: str = "lsgan"
    lambda_a: float = 10.0
    lambda_b: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    lr_policy: str = "linear"


class CycleGAN(Variant):
    name = "cyclegan"
    paired = False
    Config = CycleGANConfig
    generator_key, reverse_key = "G_A", "G_B"
    smoke = Smoke({"ngf": 8, "ndf": 8, "n_blocks": 2}, fit_loss="loss_cycle")

    def build_networks(self):
        c = self.config
        gen = lambda: ResnetGenerator(3, 3, c.ngf, c.n_blocks, c.norm)  # noqa: E731
        disc = lambda: PatchDiscriminator(3, c.ndf, c.n_layers_D, c.norm)  # noqa: E731
        self.pool_a, self.pool_b = ImagePool(c.pool_size), ImagePool(c.pool_size)
        return {"G_A": gen(), "G_B": gen(), "D_A": disc(), "D_B": disc()}

    def build_optimizers(self):
        c = self.config
        n = self.nets
        betas = (c.beta1, 0.999)
        return {
            "G": torch.optim.Adam([*n["G_A"].parameters(), *n["G_B"].parameters()], lr=c.lr, betas=betas),
            "D": torch.optim.Adam([*n["D_A"].parameters(), *n["D_B"].parameters()], lr=c.lr, betas=betas),
        }

    def train_step(self, batch):
        c, n, mode = self.config, self.nets, self.config.gan_mode
        real_a, real_b = batch["a"], batch["b"]
        fake_b, fake_a = n["G_A"](real_a), n["G_B"](real_b)
        rec_a, rec_b = n["G_B"](fake_b), n["G_A"](fake_a)
        # Generators: fool both Ds, reconstruct through the cycle, keep identity on own domain.
        self.set_requires_grad(["D_A", "D_B"], False)
        loss_idt = torch.zeros((), device=real_a.device)
        if c.lambda_identity > 0:
            loss_idt = (F.l1_loss(n["G_A"](real_b), real_b) * c.lambda_b
                        + F.l1_loss(n["G_B"](real_a), real_a) * c.lambda_a) * c.lambda_identity
        loss_gan = (gan_loss(self.frozen("D_A")(fake_b), True, mode)
                    + gan_loss(self.frozen("D_B")(fake_a), True, mode))
        loss_cycle = F.l1_loss(rec_a, real_a) * c.lambda_a + F.l1_loss(rec_b, real_b) * c.lambda_b
        self.optimize("G", loss_gan + loss_cycle + loss_idt)
        # Discriminators, on fakes drawn from the history pools.
        self.set_requires_grad(["D_A", "D_B"], True)
        pooled_b, pooled_a = self.pool_b.query(fake_b), self.pool_a.query(fake_a)
        loss_d_a = 0.5 * (gan_loss(n["D_A"](real_b), True, mode) + gan_loss(n["D_A"](pooled_b), False, mode))
        loss_d_b = 0.5 * (gan_loss(n["D_B"](real_a), True, mode) + gan_loss(n["D_B"](pooled_a), False, mode))
        self.optimize("D", loss_d_a + loss_d_b)
        return {"loss_G_GAN": loss_gan.detach(), "loss_cycle": loss_cycle.detach(),
                "loss_idt": loss_idt.detach(), "loss_D": (loss_d_a + loss_d_b).detach()}
