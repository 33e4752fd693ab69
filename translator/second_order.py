"""Real-ESRGAN's second-order degradation, for same-size restoration: the spec leaf `second_order`.

Wang et al. 2021, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic
Data" (reference: xinntao/Real-ESRGAN, `realesrgan_dataset.py` and the `train_realesrgan_x4plus`
options): a real photo went through blur, resizing, sensor noise and JPEG more than once, so the
pipeline runs the chain twice, each stage with its own probabilities and ranges:

    blur (21x21 kernel: isotropic/anisotropic Gaussian, generalised Gaussian or plateau, random
    angle) -> resize (up / down / keep, random interpolation) -> noise (Gaussian or Poisson,
    colour or grey) -> JPEG; the second time with a milder blur (skipped with probability 0.2).

The paper's sinc (ringing) filters are left out, and the image ends at its input size (resized
back with a random interpolation), since the task here is restoration at the same scale. Images
are float32 HxWx3 in [0, 1]; all randomness comes from the numpy Generator passed in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

KERNEL_SIZE = 21
RESAMPLERS = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)  # area, bilinear, bicubic


@dataclass(frozen=True)
class Stage:
    """One pass of the chain: its blur, resize, noise and JPEG ranges (the paper's options)."""

    blur_prob: float
    sigma: tuple[float, float]  # px
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]  # scale factor
    noise_range: tuple[float, float]  # Gaussian std, 0-255 units
    poisson_range: tuple[float, float]  # Poisson noise scale
    jpeg_range: tuple[int, int] = (30, 95)


FIRST = Stage(1.0, (0.2, 3.0), (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), (0.05, 3.0))
SECOND = Stage(0.8, (0.2, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), (0.05, 2.5))


def random_kernel(rng: np.random.Generator, sigma: tuple[float, float]) -> np.ndarray:
    """A KERNEL_SIZE x KERNEL_SIZE float64 blur kernel summing to 1: isotropic or anisotropic
    (random angle), Gaussian (probabilities 0.45 / 0.25), generalised Gaussian (shape beta in
    0.5-4; 0.12 / 0.03) or plateau (beta in 1-2; 0.12 / 0.03), sigmas drawn from `sigma` px."""
    kind = rng.choice(6, p=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    s1 = rng.uniform(*sigma)
    s2 = rng.uniform(*sigma) if kind % 2 else s1
    theta = rng.uniform(0, np.pi) if kind % 2 else 0.0
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([s1 ** 2, s2 ** 2]) @ rot.T)
    r = KERNEL_SIZE // 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    grid = np.stack([x, y], axis=-1).astype(np.float64)
    q = np.einsum("...i,ij,...j->...", grid, inv, grid)  # x^T Sigma^-1 x
    if kind < 2:
        k = np.exp(-0.5 * q)
    elif kind < 4:
        k = np.exp(-0.5 * q ** rng.uniform(0.5, 4.0))
    else:
        k = 1.0 / (1.0 + q ** rng.uniform(1.0, 2.0))
    return k / k.sum()


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of each channel with `kernel` (odd square), borders mirrored, via the FFT."""
    r = kernel.shape[0] // 2
    h, w = image.shape[:2]
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    shape = padded.shape[:2]
    spectrum = np.fft.rfft2(kernel, s=shape)
    out = np.fft.irfft2(np.fft.rfft2(padded, axes=(0, 1)) * spectrum[..., None], s=shape, axes=(0, 1))
    return out[2 * r:2 * r + h, 2 * r:2 * r + w].astype(np.float32)


def resize(image: np.ndarray, size: tuple[int, int], resample, box=None) -> np.ndarray:
    """HxWxC float -> size (w, h), channel by channel in PIL's float mode (no 8-bit rounding);
    `box` (left, top, right, bottom, fractions allowed): only that region of `image` is resampled."""
    return np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(size, resample, box=box))
                     for c in range(image.shape[2])], axis=-1)


def add_noise(image: np.ndarray, rng: np.random.Generator, stage: Stage) -> np.ndarray:
    """Gaussian (std from `noise_range`) or Poisson (scaled by `poisson_range`) noise, each with
    probability 0.5, the same in all channels (grey noise) with probability 0.4."""
    grey = rng.random() < 0.4
    shape = image.shape[:2] + ((1,) if grey else (image.shape[2],))
    if rng.random() < 0.5:
        noise = rng.normal(0.0, rng.uniform(*stage.noise_range) / 255.0, shape)
    else:
        base = image.mean(axis=2, keepdims=True) if grey else image
        levels = 255.0
        noise = (rng.poisson(np.clip(base, 0, 1) * levels) / levels - base) * rng.uniform(*stage.poisson_range)
    return np.clip(image + noise.astype(np.float32), 0.0, 1.0)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """HxWx3 float in [0, 1] -> its JPEG round trip at `quality` (1-100, PIL's encoder), float32."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def run_stage(image: np.ndarray, rng: np.random.Generator, stage: Stage) -> np.ndarray:
    """One pass of `stage`: blur (with its probability), resize (up/down/keep; the size may change),
    noise, JPEG. HxWx3 float32 in [0, 1] in and out."""
    h, w = image.shape[:2]
    if rng.random() < stage.blur_prob:
        image = convolve(image, random_kernel(rng, stage.sigma))
    way = rng.choice(3, p=stage.resize_probs)
    factor = rng.uniform(1.0, stage.resize_range[1]) if way == 0 else \
        rng.uniform(stage.resize_range[0], 1.0) if way == 1 else 1.0
    if factor != 1.0:
        size = (max(4, round(w * factor)), max(4, round(h * factor)))
        image = resize(image, size, RESAMPLERS[int(rng.integers(3))])
    image = add_noise(image, rng, stage)
    return jpeg(image, int(rng.integers(stage.jpeg_range[0], stage.jpeg_range[1] + 1)))


@dataclass(frozen=True)
class SecondOrder:
    """The two-stage chain (`FIRST`, then `SECOND`), ending at the input's size."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        out = run_stage(run_stage(image, rng, FIRST), rng, SECOND)
        if out.shape[:2] != (h, w):
            out = resize(out, (w, h), RESAMPLERS[int(rng.integers(3))])
        return np.clip(out, 0.0, 1.0).astype(np.float32)
