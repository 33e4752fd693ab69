"""GAN objectives and the image pool of CycleGAN."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def gan_loss(pred: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """`vanilla` (BCE on logits), `lsgan` (least squares) or `wgan` (critic score)."""
    if mode == "wgan":
        return -pred.mean() if real else pred.mean()
    target = torch.full_like(pred, 1.0 if real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(pred.float(), target.float())
    if mode == "lsgan":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"unknown GAN mode {mode!r}")


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (||grad critic(x_hat)|| - 1)^2 on random interpolates."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative PSNR (NAFNet's loss) on [-1,1] images, averaged over the batch."""
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(mse / 4 + 1e-8).mean()  # [-1,1] has peak-to-peak 2 -> divide by 4


class ImagePool:
    """Keeps up to `size` generated images; returns a mix of new and older fakes so the
    discriminator sees a history of generators, not only the latest (Shrivastava et al.)."""

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                idx = random.randrange(self.size)
                out.append(self.images[idx].clone())
                self.images[idx] = image
            else:
                out.append(image)
        return torch.cat(out, 0)
