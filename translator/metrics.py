"""Image quality metrics on [0, 1] images (NCHW tensors), one value per image.

SSIM follows Wang et al. 2004: Gaussian window (sigma 1.5, 11 taps), K1 0.01, K2 0.03,
population covariances, the mean over the valid region (5 pixels trimmed at each border,
as scikit-image does), averaged over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    x, y = pred.double(), target.double()
    c = x.shape[1]
    g = _window().to(x.device)
    # Separable filter with no padding: the output is exactly the region skimage averages.
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t):
        if min(t.shape[-2:]) < g.numel():
            raise ValueError("SSIM needs images of at least 11x11 pixels")
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (what users see after saving)."""
    return ((x.float() + 1) / 2).clamp(0, 1)
