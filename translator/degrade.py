"""Composable, seeded image degradations described by spec strings.

    gaussian:1.5              Gaussian blur, sigma in pixels (matches scipy.ndimage reflect mode)
    random_gaussian:0.5-3     sigma drawn uniformly per image
    resize:4                  down by 4 (area), back up bicubic
    noise:10                  additive Gaussian noise, std in 0-255 units
    jpeg:30                   JPEG re-encode at quality 30
    mix(a,b,...)              one of them, chosen at random per image
    chain(a,b,...)            all of them, in order

Images are float32 HxWx3 numpy arrays in [0, 1]. `parse(spec)` returns a callable
`degradation(image, rng)`; `apply(spec, image, seed)` is the seeded one-shot form.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image


class DegradationError(ValueError):
    """A spec string that does not parse."""


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over H and W; borders mirror with the edge pixel repeated
    (scipy's `reflect`, numpy's `symmetric`)."""
    if sigma <= 0:
        return image.copy()
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out.astype(np.float32)


def _resize_channels(image: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Resize a float HxWxC image channel by channel in PIL's float mode (no 8-bit rounding)."""
    chans = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(size, resample))
             for c in range(image.shape[2])]
    return np.stack(chans, axis=-1)


@dataclass(frozen=True)
class Gaussian:
    sigma: float

    def __call__(self, image, rng):
        return gaussian_blur(image, self.sigma)


@dataclass(frozen=True)
class RandomGaussian:
    low: float
    high: float

    def __call__(self, image, rng):
        return gaussian_blur(image, float(rng.uniform(self.low, self.high)))


@dataclass(frozen=True)
class Resize:
    factor: float

    def __call__(self, image, rng):
        h, w = image.shape[:2]
        small = (max(1, round(w / self.factor)), max(1, round(h / self.factor)))
        down = _resize_channels(image, small, Image.Resampling.BOX)
        return np.clip(_resize_channels(down, (w, h), Image.Resampling.BICUBIC), 0.0, 1.0)


@dataclass(frozen=True)
class Noise:
    std: float  # in 0-255 units

    def __call__(self, image, rng):
        noisy = image + rng.normal(0.0, self.std / 255.0, image.shape).astype(np.float32)
        return np.clip(noisy, 0.0, 1.0)


@dataclass(frozen=True)
class Jpeg:
    quality: int

    def __call__(self, image, rng):
        buf = io.BytesIO()
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=self.quality)
        return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Mix:
    options: tuple

    def __call__(self, image, rng):
        return self.options[int(rng.integers(len(self.options)))](image, rng)


@dataclass(frozen=True)
class Chain:
    steps: tuple

    def __call__(self, image, rng):
        for step in self.steps:
            image = step(image, rng)
        return image


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DegradationError(f"bad number {text!r} in degradation {spec!r}") from None
    if value <= 0:
        raise DegradationError(f"degradation {spec!r} needs a positive number")
    return value


def _leaf(token: str):
    name, _, arg = token.partition(":")
    name, arg = name.strip(), arg.strip()
    if name == "gaussian":
        return Gaussian(_number(arg, token))
    if name == "random_gaussian":
        m = re.fullmatch(r"([0-9.]+)-([0-9.]+)", arg)
        if not m:
            raise DegradationError(f"random_gaussian needs LO-HI, got {token!r}")
        low, high = _number(m[1], token), _number(m[2], token)
        if low > high:
            raise DegradationError(f"random_gaussian range is backwards in {token!r}")
        return RandomGaussian(low, high)
    if name == "resize":
        return Resize(_number(arg, token))
    if name == "noise":
        return Noise(_number(arg, token))
    if name == "jpeg":
        q = int(_number(arg, token))
        if not 1 <= q <= 100:
            raise DegradationError(f"jpeg quality must be 1-100, got {token!r}")
        return Jpeg(q)
    raise DegradationError(
        f"unknown degradation {token!r}; use gaussian:S, random_gaussian:LO-HI, resize:F, noise:STD, "
        "jpeg:Q, mix(...), chain(...)")


def _split_args(body: str, spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise DegradationError(f"unbalanced parentheses in {spec!r}")
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if depth:
        raise DegradationError(f"unbalanced parentheses in {spec!r}")
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def parse(spec: str):
    """Spec string -> degradation callable `(image, rng) -> image`."""
    spec = spec.strip()
    m = re.fullmatch(r"(mix|chain)\((.*)\)", spec, flags=re.S)
    if m:
        parts = [parse(p) for p in _split_args(m[2], spec)]
        if not parts:
            raise DegradationError(f"{m[1]}() needs at least one degradation")
        return Mix(tuple(parts)) if m[1] == "mix" else Chain(tuple(parts))
    if not spec:
        raise DegradationError("empty degradation spec")
    return _leaf(spec)


def apply(spec: str, image: np.ndarray, seed: int) -> np.ndarray:
    """Degrade `image` (HxWx3 float32 in [0,1]) deterministically for `seed`."""
    return parse(spec)(image, np.random.default_rng(seed)).astype(np.float32)
