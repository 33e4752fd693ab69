"""Image quality metrics on [0, 1] images (NCHW tensors), and the set metrics every gain is read from.

Per image: `psnr` (dB) and `ssim`. SSIM follows Wang et al. 2004: Gaussian window (sigma 1.5,
11 taps), K1 0.01, K2 0.03, population covariances, the mean over the valid region (5 pixels
trimmed at each border, as scikit-image does), averaged over channels.

Per set (`SetTally`, definition `PSNR_DEFINITION`): PSNR of the pooled MSE, i.e. the squared
error summed over every pixel value of every image of the set, divided by their number, then
10*log10(1 / MSE); the gain is the output's pooled PSNR minus the input's on the same images.
For super-resolution (a target N times the input's size) the input is scored as its bicubic
upscale to the target's size (`baseline`): "input PSNR" is bicubic's, and the gain is over bicubic.
The per-image mean of PSNR (BasicSR, most papers) is not used: PSNR is unbounded where input
and target are identical (a flat crop the degradation leaves unchanged), so one such pair adds
~120 dB to the input's mean and an invisible change of the model costs 40-60 dB of "gain".
Pooled, an identical pair adds zero error and only its share of the pixels. See docs/metrics.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

PSNR_DEFINITION = "pooled-mse"  # recorded with every stored number a gain is computed from
MSE_FLOOR = 1e-12  # PSNR <= 120 dB for data_range 1: only for an image (or set) with no error at all
# A pair whose input is within half an 8-bit level (RMS) of its target: the degradation left
# nothing visible to undo (input PSNR above 54.15 dB). Such pairs are counted, not ranked.
UNCHANGED_MSE = (0.5 / 255) ** 2


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences per image: (N, C, H, W) x2 -> (N,) float64."""
    return ((pred.double() - target.double()) ** 2).flatten(1).sum(1)


def psnr_of_mse(mse: float, data_range: float = 1.0) -> float:
    """10*log10(data_range^2 / mse) in dB; mse floored at MSE_FLOOR (120 dB at range 1); nan stays nan."""
    if math.isnan(mse):
        return math.nan
    return 10 * math.log10(data_range**2 / max(mse, MSE_FLOOR))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (dB): (N, C, H, W) x2 in [0, data_range] -> (N,) float64, capped at 120 dB
    (MSE floored at 1e-12). Averaging these over a set is NOT the set's PSNR: see `SetTally`."""
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(MSE_FLOOR))


def _window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM in [-1, 1] (1 = identical): (N, C, H, W) x2, H and W >= 11 -> (N,) float64.
    Raises ValueError for a smaller image."""
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


def baseline(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What an input is scored as against a target of `size` (H, W): the input itself when the
    sizes agree, else its bicubic upscale to `size` (PyTorch's bicubic, a=-0.75, no antialias,
    half-pixel centres: the usual super-resolution baseline), clamped to [-1, 1].
    (N, C, h, w) float in [-1, 1] -> (N, C, H, W) float32."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    up = F.interpolate(x.float(), size=tuple(size), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1)


@dataclass
class SetTally:
    """Running sums over a set of scored images (data range 1), from which `summary` gives the
    set's metrics (definition `PSNR_DEFINITION`). Sums add across workers (`sums`/`from_sums`:
    all-reduce them); the per-image gains behind the median do not (`gains`, local).

    images: images added; values: pixel values (N*C*H*W) added; sse / input_sse: squared error
    of the output / input against the target; ssim / input_ssim: sums of per-image SSIM (nan
    for an image under 11 px, left out: `ssim_images` counts the rest); unchanged: pairs whose
    input MSE is below UNCHANGED_MSE; improved: the other pairs whose output MSE is below their
    input's.
    """

    images: float = 0.0
    values: float = 0.0
    sse: float = 0.0
    ssim: float = 0.0
    ssim_images: float = 0.0
    input_sse: float = 0.0
    input_ssim: float = 0.0
    unchanged: float = 0.0
    improved: float = 0.0
    gains: list[float] = field(default_factory=list)

    def add_image(self, values: int, sse: float, ssim: float = math.nan, input_sse: float | None = None,
                  input_ssim: float = math.nan) -> None:
        """One image's numbers: `values` pixel values (C*H*W), squared errors, SSIMs (nan: none)."""
        self.images += 1
        self.values += values
        self.sse += sse
        if not math.isnan(ssim):
            self.ssim += ssim
            self.input_ssim += 0.0 if math.isnan(input_ssim) else input_ssim
            self.ssim_images += 1
        if input_sse is None:
            return
        self.input_sse += input_sse
        if input_sse / values < UNCHANGED_MSE:
            self.unchanged += 1
        else:
            self.improved += sse < input_sse
            self.gains.append(psnr_of_mse(sse / values) - psnr_of_mse(input_sse / values))

    def add(self, out: torch.Tensor, target: torch.Tensor, inp: torch.Tensor | None = None) -> None:
        """A batch of [0, 1] NCHW images: the output, the target and (paired) the input."""
        sse, per = squared_error(out, target), out[0].numel()
        small = min(target.shape[-2:]) < 11
        s = [math.nan] * len(sse) if small else ssim(out, target).tolist()
        if inp is None:
            for e, q in zip(sse.tolist(), s):
                self.add_image(per, e, q)
            return
        ise = squared_error(inp, target).tolist()
        iss = [math.nan] * len(sse) if small else ssim(inp, target).tolist()
        for e, q, ie, iq in zip(sse.tolist(), s, ise, iss):
            self.add_image(per, e, q, ie, iq)

    def sums(self) -> dict[str, float]:
        """Every sum by name (not `gains`), for an all-reduce."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "gains"}

    @classmethod
    def from_sums(cls, sums: dict[str, float]) -> SetTally:
        return cls(**{k: float(v) for k, v in sums.items()})

    def summary(self, paired: bool = True) -> dict[str, float]:
        """-> {"psnr", "ssim"} (dB, SSIM mean) and, paired, "input_psnr", "input_ssim", "gain_db"
        (output minus input pooled PSNR, dB), "improved_share" (share in [0, 1] of the pairs not
        unchanged whose output MSE is below the input's; nan if none), "unchanged" (count), and
        "median_gain_db" (per-image gain over the pairs not unchanged) where `gains` were kept.
        Raises ValueError for an empty tally."""
        if not self.images:
            raise ValueError("no images were scored")
        k = self.ssim_images or math.nan
        out = {"psnr": psnr_of_mse(self.sse / self.values), "ssim": self.ssim / k}
        if paired:
            changed = self.images - self.unchanged
            out.update(input_psnr=psnr_of_mse(self.input_sse / self.values), input_ssim=self.input_ssim / k,
                       improved_share=self.improved / changed if changed else math.nan, unchanged=self.unchanged)
            out["gain_db"] = out["psnr"] - out["input_psnr"]
            if self.gains:
                out["median_gain_db"] = statistics.median(self.gains)
        return out
