"""Composable, seeded image degradations described by spec strings.

A spec is a leaf `NAME` or `NAME:ARG` from the table `DEGRADATIONS` (e.g. `gaussian:1.5`,
`random_gaussian:0.5-3`, `resize:4`, `down:4`, `jpeg:30`, `second_order`, `gray`; `rules()` lists each leaf with its
allowed range), or a composition of specs:

    mix(a,b,...)              one of them, chosen at random per image
    chain(a,b,...)            all of them, in order

Images are float32 HxWx3 numpy arrays in [0, 1]. Every leaf keeps the image's size except `down:N`
(super-resolution pairs), which returns it N times smaller; `scale_of(spec)` is the product of a
spec's `down` factors (1 without any). `parse(spec)` returns a callable `degradation(image, rng)`; `apply(spec, image, seed)` is the seeded one-shot form. A new leaf is
one `Degradation` entry in `DEGRADATIONS` (its class, argument parser, rule, help and task).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from translator.second_order import SecondOrder, jpeg, resize


class DegradationError(ValueError):
    """A spec string that does not parse, or a value outside its spec's range (the message
    names the spec and the allowed range)."""


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
        down = resize(image, small, Image.Resampling.BOX)
        return np.clip(resize(down, (w, h), Image.Resampling.BICUBIC), 0.0, 1.0)


@dataclass(frozen=True)
class Down:
    """Shrink by the whole factor N, bicubic (PIL's, which widens its kernel by N when reducing:
    antialiased, like MATLAB's `imresize`, the usual way super-resolution pairs are made, e.g.
    DIV2K's bicubic track). An HxW image gives floor(H/N) x floor(W/N); callers that want exact
    N-times pairs crop the target to a multiple of N first (ingest does)."""

    factor: int

    def __call__(self, image, rng):
        h, w = image.shape[:2]
        small = (max(1, w // self.factor), max(1, h // self.factor))
        return np.clip(resize(image, small, Image.Resampling.BICUBIC), 0.0, 1.0)


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
        return jpeg(image, self.quality)


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


# BT.601 luma weights, as PIL's "L" conversion uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
HOLE_VALUE = 1.0  # holes and scratches are filled with white, like missing paper or emulsion


def luminance(image: np.ndarray) -> np.ndarray:
    """HxWx3 float in [0, 1] -> HxW float32 luma (BT.601 weights)."""
    return (image[..., :3].astype(np.float32) @ LUMA).astype(np.float32)


@dataclass(frozen=True)
class Gray:
    """Colour -> grey (luma copied to the 3 channels); the target stays colour (colourisation)."""

    def __call__(self, image, rng):
        return np.repeat(luminance(image)[..., None], 3, axis=-1)


@dataclass(frozen=True)
class Edges:
    """A photo -> a line drawing: the gradient magnitude of the luma blurred by `sigma` pixels,
    scaled by its 95th percentile (so line density does not depend on contrast) and mapped to black
    lines on white. Deterministic: no randomness. (A soft Canny without hysteresis, as in the
    edges2* datasets of pix2pix, Isola et al. 2017, which used HED/Canny edges.)"""

    sigma: float = 1.0

    def __call__(self, image, rng):
        lum = gaussian_blur(luminance(image)[..., None], self.sigma)[..., 0]
        gy, gx = np.gradient(lum.astype(np.float64))
        mag = np.hypot(gx, gy)
        scale = float(np.percentile(mag, 95)) + 1e-6
        ink = np.clip((mag / scale - 0.35) / 0.65, 0.0, 1.0)  # faint texture stays white
        return np.repeat((1.0 - ink).astype(np.float32)[..., None], 3, axis=-1)


@dataclass(frozen=True)
class Holes:
    """Random axis-aligned rectangles (each 5-25% of the side) filled with white until at least
    `fraction` of the pixels are covered (inpainting / damaged-photo restoration)."""

    fraction: float

    def __call__(self, image, rng):
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(1000):  # bounded: each rectangle adds area, so this ends long before
            if mask.mean() >= self.fraction:
                break
            rh = max(1, int(h * rng.uniform(0.05, 0.25)))
            rw = max(1, int(w * rng.uniform(0.05, 0.25)))
            y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            mask[y:y + rh, x:x + rw] = True
        out = image.copy()
        out[mask] = HOLE_VALUE
        return out


@dataclass(frozen=True)
class Scratches:
    """`count` thin white strokes (1-3 px wide bent polylines, each segment ~1/12 of the side), like scratches on
    an old print."""

    count: int

    def __call__(self, image, rng):
        h, w = image.shape[:2]
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(self.count):
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            points = [(x, y)]
            for _ in range(int(rng.integers(1, 4))):  # short bent strokes, up to ~1/6 of the side each
                x, y = x + float(rng.normal(0, w / 12)), y + float(rng.normal(0, h / 12))
                points.append((x, y))
            draw.line(points, fill=255, width=int(rng.integers(1, 4)))
        mask = np.asarray(canvas) > 0
        out = image.copy()
        out[mask] = HOLE_VALUE
        return out


MAX_SIGMA = 20.0  # px: a kernel of 161 taps; far blurrier than any restoration task, and still fast
MAX_RESIZE = 32.0  # a 256 px image shrinks to 8 px
MAX_DOWN = 8  # super-resolution scales people train: 2, 3, 4 (8 for the brave)
MAX_NOISE = 255.0  # std in 0-255 units: beyond it the image is noise
MAX_SCRATCHES = 1000
NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")  # plain decimals: no sign, inf, nan or `1_0`


def _number(text: str | None, token: str, what: str, low: float, high: float, *, low_open: bool = True,
            high_open: bool = False, whole: bool = False) -> float:
    """`text` as a number in the range, else DegradationError naming the spec and the range.
    low_open/high_open: the bound itself is excluded; whole: digits only (no 50.7 -> 50).
    None (no `:ARG` in the spec) is refused like an empty argument."""
    text = text or ""
    lo, hi = ("above" if low_open else "at least"), ("below" if high_open else "at most")
    kind = "a whole number" if whole else "a number"
    rule = f"{kind} {lo} {low:g} and {hi} {high:g}" if low_open or high_open else f"{kind} from {low:g} to {high:g}"
    ok = re.fullmatch(r"\d+", text) if whole else NUMBER.fullmatch(text)
    value = float(text) if ok else None
    if value is None or (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        raise DegradationError(f"degradation {token!r}: {what} must be {rule} (got {text!r})")
    return value


def _random_gaussian(arg: str | None, token: str) -> RandomGaussian:
    m = re.fullmatch(r"([^-]+)-([^-]+)", arg or "")
    if not m:
        raise DegradationError(f"degradation {token!r}: random_gaussian needs LO-HI, two sigmas in px with "
                               f"0 < LO <= HI <= {MAX_SIGMA:g}, e.g. random_gaussian:0.5-3")
    low = _number(m[1].strip(), token, "LO in random_gaussian:LO-HI", 0, MAX_SIGMA)
    high = _number(m[2].strip(), token, "HI in random_gaussian:LO-HI", 0, MAX_SIGMA)
    if low > high:
        raise DegradationError(f"degradation {token!r}: the range is backwards; random_gaussian needs LO <= HI")
    return RandomGaussian(low, high)


def _no_argument(cls):
    def build(arg: str | None, token: str):
        if arg is not None:
            name = token.partition(":")[0].strip()
            raise DegradationError(f"degradation {token!r}: {name} takes no argument (write {name})")
        return cls()
    return build


@dataclass(frozen=True)
class Degradation:
    """One leaf of the spec grammar, an entry of `DEGRADATIONS`.

    - `cls`: the callable's class, `cls(...)(image, rng) -> image` on HxWx3 float32 in [0, 1],
      randomness only from `rng` (a numpy Generator);
    - `build(arg, token) -> cls instance`: parses `arg` (the text after `NAME:`, None without a
      colon) and refuses a bad or out-of-range one with a `DegradationError` naming `token` (the
      whole leaf spec) and the range (`_number` does both);
    - `rule`: the spec and its range, as `rules()` and the CLI help show it;
    - `help`: what it does, one line;
    - `task`: what a model trained to undo it does (`translator.tasks.TASKS`).
    """

    cls: type
    build: Callable[[str | None, str], Callable]
    rule: str
    help: str
    task: str


DEGRADATIONS: dict[str, Degradation] = {
    "gaussian": Degradation(
        Gaussian, lambda a, t: Gaussian(_number(a, t, "the blur sigma S in gaussian:S", 0, MAX_SIGMA)),
        "gaussian:S (0 < S <= 20 px)", "Gaussian blur, sigma in pixels (scipy.ndimage reflect mode)", "deblur"),
    "random_gaussian": Degradation(
        RandomGaussian, _random_gaussian, "random_gaussian:LO-HI (0 < LO <= HI <= 20)",
        "Gaussian blur with sigma drawn uniformly per image", "deblur"),
    "resize": Degradation(
        Resize, lambda a, t: Resize(_number(a, t, "the factor F in resize:F (down by F, back up)", 1, MAX_RESIZE)),
        "resize:F (1 < F <= 32)", "down by F (area), back up bicubic", "deblur"),
    "down": Degradation(
        Down, lambda a, t: Down(int(_number(a, t, "the scale N in down:N", 2, MAX_DOWN, low_open=False, whole=True))),
        "down:N (whole number 2-8)", "shrink by N, bicubic: the input of an N-times super-resolution pair", "upscale"),
    "noise": Degradation(
        Noise, lambda a, t: Noise(_number(a, t, "the std in noise:STD (0-255 units)", 0, MAX_NOISE)),
        "noise:STD (0 < STD <= 255)", "additive Gaussian noise, std in 0-255 units", "restore"),
    "jpeg": Degradation(
        Jpeg, lambda a, t: Jpeg(int(_number(a, t, "the quality Q in jpeg:Q", 1, 100, low_open=False, whole=True))),
        "jpeg:Q (whole number 1-100)", "JPEG re-encode at quality Q", "restore"),
    "second_order": Degradation(
        SecondOrder, _no_argument(SecondOrder), "second_order",
        "Real-ESRGAN's blur, resize, noise and JPEG, twice, each stage at random (Wang et al. 2021)", "restore"),
    "gray": Degradation(
        Gray, _no_argument(Gray), "gray", "colour -> luminance (ITU-R BT.601), for colourisation", "colorize"),
    "edges": Degradation(
        Edges, lambda a, t: Edges(_number(a, t, "the blur sigma S in edges:S", 0, MAX_SIGMA) if a is not None else 1.0),
        "edges[:S] (0 < S <= 20)", "a line drawing: black lines on white from the blurred gradient", "sketch"),
    "holes": Degradation(
        Holes, lambda a, t: Holes(_number(a, t, "the covered fraction in holes:FRACTION", 0, 1, high_open=True)),
        "holes:FRACTION (0 < FRACTION < 1)", "random white rectangles covering about FRACTION of the image",
        "restore"),
    "scratches": Degradation(
        Scratches, lambda a, t: Scratches(int(_number(a, t, "the stroke count N in scratches:N", 1, MAX_SCRATCHES,
                                                      low_open=False, whole=True))),
        "scratches:N (whole number 1-1000)", "N thin random white strokes (damaged-photo restoration)", "restore"),
}


def rules() -> str:
    """Every leaf's rule, then the two compositions: what an unknown spec's error and `--help` show."""
    return ", ".join([*(d.rule for d in DEGRADATIONS.values()), "mix(...)", "chain(...)"])


def _leaf(token: str):
    name, colon, arg = token.partition(":")
    entry = DEGRADATIONS.get(name.strip())
    if entry is None:
        raise DegradationError(f"unknown degradation {token!r}; use {rules()}")
    return entry.build(arg.strip() if colon else None, token)


def _split_args(body: str, spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            break
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if depth:
        raise DegradationError(f"unbalanced parentheses in {spec!r}")
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _scale(node) -> int:
    if isinstance(node, Down):
        return node.factor
    if isinstance(node, Chain):
        return int(np.prod([_scale(step) for step in node.steps]))
    if isinstance(node, Mix):
        return _scale(node.options[0])  # parse checks that every option has the same
    return 1


def parse(spec: str):
    """Spec string -> degradation callable `(image, rng) -> image`."""
    spec = spec.strip()
    m = re.fullmatch(r"(mix|chain)\((.*)\)", spec, flags=re.S)
    if m:
        parts = [parse(p) for p in _split_args(m[2], spec)]
        if not parts:
            raise DegradationError(f"{m[1]}() needs at least one degradation")
        scales = sorted({_scale(p) for p in parts})
        if m[1] == "mix" and len(scales) > 1:  # pairs of two scales in one dataset
            raise DegradationError(f"degradation {spec!r}: the options of a mix(...) shrink by different factors "
                                   f"({', '.join(f'{s}x' for s in scales)}); a dataset has one scale")
        node = Mix(tuple(parts)) if m[1] == "mix" else Chain(tuple(parts))
        if _scale(node) > MAX_DOWN:
            raise DegradationError(f"degradation {spec!r}: its down:N steps shrink by {_scale(node)}x in all; "
                                   f"at most {MAX_DOWN}x")
        return node
    if not spec:
        raise DegradationError("empty degradation spec")
    if re.match(r"(mix|chain)\(", spec):  # opened but not closed at the end
        raise DegradationError(f"unbalanced parentheses in {spec!r}")
    return _leaf(spec)


def scale_of(spec: str) -> int:
    """How many times smaller than the target a spec's input is (the super-resolution scale): the
    product of its `down:N` factors, 1 for a same-size spec. Raises DegradationError for a spec that
    does not parse or a `mix` whose options shrink by different factors."""
    return _scale(parse(spec))


def apply(spec: str, image: np.ndarray, seed: int) -> np.ndarray:
    """Degrade `image` (HxWx3 float32 in [0,1]) deterministically for `seed`."""
    return parse(spec)(image, np.random.default_rng(seed)).astype(np.float32)
