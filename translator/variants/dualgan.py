"""`dualgan` (Yi et al. 2017), unpaired: two U-Net generators, two patch critics trained as
WGANs (weight clipping 0.01, or a gradient penalty), RMSprop 5e-5, n_critic 2, and an L1
reconstruction loss weighted by lambda 500 in both directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from translator.config import TrainConfig
from translator.losses import gradient_penalty
from translator.nets.patchgan import PatchDiscriminator
from translator.nets.unet import UNETS, UnetGenerator, unet_depth
from translator.variants.base import Smoke, Variant


@dataclass
class DualGANConfig(TrainConfig):
    SIZE_SETTINGS = {"netG": UNETS}

    netG: str = "unet_256"
    ngf: int = 64
    ndf: int = 64
    n_layers_D: int = 3
    norm: str = "batch"  # generators
    critic_norm: str = "instance"  # batch norm would break the per-sample gradient penalty
    dropout: bool = True
    clip: float = 0.01
    gradient_penalty: float = 0.0  # > 0 replaces clipping by WGAN-GP with this weight
    n_critic: int = 2
    lambda_a: float = 500.0
    lambda_b: float = 500.0
    lr: float = 5e-5

    def validate(self):
        super().validate()
        unet_depth(self.netG)
        if self.gradient_penalty < 0:
            raise ValueError(f"gradient_penalty must be 0 (clip the critics) or > 0, got {self.gradient_penalty}")
        if self.gradient_penalty == 0 and not self.clip > 0:
            raise ValueError(f"clip must be > 0 when gradient_penalty is 0, got {self.clip}")


class DualGAN(Variant):
    name = "dualgan"
    paired = False
    Config = DualGANConfig
    generator_key, reverse_key = "G_A", "G_B"
    smoke = Smoke({"netG": "unet_32", "ngf": 8, "ndf": 8}, fit_loss="loss_cycle", fit={"dropout": False, "lr": 5e-4})

    def build_networks(self):
        c = self.config
        gen = lambda: UnetGenerator(3, 3, unet_depth(c.netG), c.ngf, c.norm, c.dropout)  # noqa: E731
        critic = lambda: PatchDiscriminator(3, c.ndf, c.n_layers_D, c.critic_norm)  # noqa: E731
        return {"G_A": gen(), "G_B": gen(), "D_A": critic(), "D_B": critic()}

    def build_optimizers(self):
        n, lr = self.nets, self.config.lr
        return {
            "G": torch.optim.RMSprop([*n["G_A"].parameters(), *n["G_B"].parameters()], lr=lr),
            "D": torch.optim.RMSprop([*n["D_A"].parameters(), *n["D_B"].parameters()], lr=lr),
        }

    def _critic_loss(self, critic, real, fake):
        loss = critic(fake).mean() - critic(real).mean()
        if self.config.gradient_penalty > 0:
            loss = loss + self.config.gradient_penalty * gradient_penalty(critic, real, fake)
        return loss

    def train_step(self, batch):
        c, n = self.config, self.nets
        real_a, real_b = batch["a"], batch["b"]
        # Critics first, n_critic times: D_A scores domain B, D_B scores domain A.
        self.set_requires_grad(["D_A", "D_B"], True)
        with torch.no_grad():
            fake_b, fake_a = n["G_A"](real_a), n["G_B"](real_b)
        for _ in range(c.n_critic):
            loss_d = self._critic_loss(n["D_A"], real_b, fake_b) + self._critic_loss(n["D_B"], real_a, fake_a)
            self.optimize("D", loss_d)
            if c.gradient_penalty <= 0:
                for p in [*n["D_A"].parameters(), *n["D_B"].parameters()]:
                    p.data.clamp_(-c.clip, c.clip)
        # Generators: raise the critics' scores and reconstruct each domain through the pair.
        self.set_requires_grad(["D_A", "D_B"], False)
        fake_b, fake_a = n["G_A"](real_a), n["G_B"](real_b)
        loss_gan = -self.frozen("D_A")(fake_b).mean() - self.frozen("D_B")(fake_a).mean()
        loss_rec = (F.l1_loss(n["G_B"](fake_b), real_a) * c.lambda_a
                    + F.l1_loss(n["G_A"](fake_a), real_b) * c.lambda_b)
        self.optimize("G", loss_gan + loss_rec)
        return {"loss_D": loss_d.detach(), "loss_G_GAN": loss_gan.detach(), "loss_cycle": loss_rec.detach()}
