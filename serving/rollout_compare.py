"""How a rollout's two models' outputs compare, as pure functions and plain data (numpy and
Pillow only): the PSNR of the challenger's output against the champion's on the same request
(shadow pairs), and a no-reference sharpness measure of each output, the variance of the
Laplacian of its luminance (Pech-Pacheco et al., "Diatom autofocusing in brightfield
microscopy: a comparative study", ICPR 2000), which needs no ground truth and so works on live
photos. A blurrier (lower) or noisier / ringing (higher) output than the champion's moves it."""

from __future__ import annotations

import io
import math
from collections import deque
from typing import Any

import numpy as np


def decode(data: bytes) -> np.ndarray | None:
    """An encoded image (any format Pillow reads) -> its pixels as stored (H x W [x C], uint8 or
    uint16), or None when it cannot be decoded."""
    from PIL import Image

    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except Exception:
        return None


def psnr(x: np.ndarray, y: np.ndarray) -> float | None:
    """PSNR (dB) of `y` against `x` on the full range of their dtype (255 for 8-bit, 65535 for
    16-bit; 1.0 for floats); inf when identical; None for different shapes or dtypes."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return None
    peak = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def output_psnr(a: bytes, b: bytes) -> float | None:
    """PSNR (dB) of encoded image `b` against encoded image `a` (`psnr`); None when either
    cannot be decoded or they differ in size, channels or bit depth."""
    x, y = decode(a), decode(b)
    return None if x is None or y is None else psnr(x, y)


def sharpness(pixels: np.ndarray) -> float | None:
    """Variance of the 4-neighbour Laplacian of the luminance (ITU-R BT.601 weights) of an
    H x W [x C] image scaled to 0-1 by its dtype's range -> a float >= 0 (0: flat; about 0.005
    for a sharp photo, far less for a blurred one); None for images under 3 x 3 pixels."""
    x = pixels.astype(np.float64)
    if np.issubdtype(pixels.dtype, np.integer):
        x /= float(np.iinfo(pixels.dtype).max)
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114]) if x.shape[-1] >= 3 else x[..., 0]  # RGB[A] / LA
    if x.shape[0] < 3 or x.shape[1] < 3:
        return None
    lap = x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4 * x[1:-1, 1:-1]
    return float(lap.var())


def output_sharpness(data: bytes) -> float | None:
    """`sharpness` of an encoded image; None when it cannot be decoded or is too small."""
    x = decode(data)
    return None if x is None else sharpness(x)


def compare_outputs(champion: bytes, challenger: bytes) -> tuple[float | None, float | None, float | None]:
    """Both answers to one request -> (PSNR of the challenger's against the champion's in dB,
    the champion's sharpness, the challenger's sharpness), each decoded once; None where a
    measure does not apply."""
    x, y = decode(champion), decode(challenger)
    return (None if x is None or y is None else psnr(x, y),
            None if x is None else sharpness(x), None if y is None else sharpness(y))


TRIPLET_HEIGHT = 192  # pixels: each image of a triplet is scaled to this height (a record, not a full view)


def triplet(before: bytes, champion: bytes, challenger: bytes, labels: list[str], height: int = TRIPLET_HEIGHT):
    """One mirrored request side by side: its input, the champion's and the challenger's answers
    (encoded images of any format Pillow reads, any bit depth; alpha dropped), each scaled to
    `height` pixels high with its aspect kept, under `labels` (3 captions) -> an RGB PIL image;
    None when one of them cannot be decoded."""
    from PIL import Image

    from translator.images import grid

    shown = []
    for data in (before, champion, challenger):
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except Exception:
            return None
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: to 8 bits for the record
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
        im = im.convert("RGB")
        shown.append(im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.BICUBIC))
    return grid([shown], labels=labels)


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


class Comparison:
    """The outputs compared over a rollout: shadow pairs (the PSNR of the challenger's output
    against the champion's, per mirrored request) and each version's output sharpness (paired
    in a shadow; in a canary, sampled from the requests each version answered), the last
    `window` of each kept for the guard (`sharpness_ratio`)."""

    def __init__(self, window: int = 50):
        self.pairs = 0
        self.psnr: deque[float] = deque(maxlen=2000)
        self.identical = 0
        self.sharp = {"champion": deque(maxlen=window), "challenger": deque(maxlen=window)}

    def add(self, psnr_db: float | None) -> None:
        self.pairs += 1
        if psnr_db is not None and math.isinf(psnr_db):
            self.identical += 1
        elif psnr_db is not None:
            self.psnr.append(psnr_db)

    def add_sharpness(self, role: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self.sharp[role].append(value)

    def sharpness_ratio(self, min_samples: int = 1) -> float | None:
        """The challenger's mean output sharpness over the champion's (recent window), once
        each has `min_samples`; None before, or when the champion's outputs are flat."""
        a, b = self.sharp["champion"], self.sharp["challenger"]
        if len(a) < min_samples or len(b) < min_samples or not np.mean(a) > 0:
            return None
        return float(np.mean(b) / np.mean(a))

    def hold(self, max_change: float, min_samples: int) -> str | None:
        """Why a stepped canary must not step up yet: the challenger's output sharpness is more
        than `max_change` times above or below the champion's; None when it is not."""
        ratio = self.sharpness_ratio(min_samples)
        if ratio is None or 1 / max_change <= ratio <= max_change:
            return None
        return (f"challenger output sharpness is {ratio:.2f} x the champion's "
                f"(allowed {1 / max_change:.2f}-{max_change:.2f})")

    def summary(self) -> dict[str, Any]:
        """-> {pairs, identical (outputs equal in every pixel), psnr_mean_db, psnr_min_db (over
        the pairs that differ), champion_sharpness, challenger_sharpness (means over the recent
        window), sharpness_ratio, sharpness_samples}."""
        return {"pairs": self.pairs, "identical": self.identical,
                "psnr_mean_db": _mean(self.psnr), "psnr_min_db": float(np.min(self.psnr)) if self.psnr else None,
                "champion_sharpness": _mean(self.sharp["champion"]),
                "challenger_sharpness": _mean(self.sharp["challenger"]),
                "sharpness_ratio": self.sharpness_ratio(),
                "sharpness_samples": {role: len(v) for role, v in self.sharp.items()}}
