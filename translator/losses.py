"""Losses: the pixel-loss table every paired variant chooses from, the GAN objectives and the
image pool of CycleGAN.

`PIXEL_LOSSES` maps a name to a `PixelLoss` (function, help, source). A paired variant's config
has a `loss` field whose value is a key of this table (each variant keeps its own default) and its
`train_step` calls `pixel_loss(config.loss)`; so one new entry is a loss every paired variant can
train with (`--set loss=NAME`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

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


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)): L1 with a smooth minimum (LapSRN, Lai et al. 2017;
    MPRNet). eps in [-1, 1] image units."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def frequency_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of the orthonormal 2-D FFTs (real and imaginary parts) over H and W: it weighs
    the high frequencies a blur removes as much as the low ones (MIMO-UNet, Cho et al. 2021)."""
    diff = torch.fft.rfft2(pred.float(), norm="ortho") - torch.fft.rfft2(target.float(), norm="ortho")
    return torch.view_as_real(diff).abs().mean()


def l1_fft_loss(pred: torch.Tensor, target: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """L1 + `weight` x `frequency_l1` (MIMO-UNet's objective, with an orthonormal FFT so the weight
    does not depend on the image size)."""
    return F.l1_loss(pred, target) + weight * frequency_l1(pred, target)


@dataclass(frozen=True)
class PixelLoss:
    """One entry of `PIXEL_LOSSES`. fn: (pred, target) -> 0-dim loss, both (N, C, H, W) float32
    in [-1, 1], lower is better; help: one line for the docs and errors; source: where it is from."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    help: str
    source: str = ""


PIXEL_LOSSES: dict[str, PixelLoss] = {
    "l1": PixelLoss(F.l1_loss, "mean absolute error", "pix2pix, NAFNet"),
    "l2": PixelLoss(F.mse_loss, "mean squared error", "the original img2img autoencoder"),
    "mse": PixelLoss(F.mse_loss, "the same as l2", ""),
    "charbonnier": PixelLoss(charbonnier_loss, "L1 with a smooth minimum, eps 1e-3", "LapSRN (Lai et al. 2017)"),
    "psnr": PixelLoss(psnr_loss, "negative PSNR", "NAFNet (Chen et al. 2022)"),
    "l1_fft": PixelLoss(l1_fft_loss, "L1 + 0.1 x L1 of the 2-D FFT", "MIMO-UNet (Cho et al. 2021)"),
}


def check_loss(name: str) -> None:
    """Raise ValueError unless `name` is a key of `PIXEL_LOSSES` (configs' `validate` call it)."""
    if name not in PIXEL_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(PIXEL_LOSSES)}, got {name!r}")


def pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function named `name` in `PIXEL_LOSSES`; ValueError for an unknown name."""
    check_loss(name)
    return PIXEL_LOSSES[name].fn


def pixel_and_l1(name: str, fake: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the `name` loss of `fake` against `target`, their L1) as float32 0-dim tensors; the L1 is the
    loss itself when `name` is "l1" (a paired restorer logs both). ValueError for an unknown name."""
    fake, target = fake.float(), target.float()
    l1 = F.l1_loss(fake, target)
    return (l1 if name == "l1" else pixel_loss(name)(fake, target)), l1


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
