"""The data pipeline's decode tasks: stored rows (PNG bytes, or pixels decoded once) -> float32
NCHW crops in [-1, 1], with random crops, flips and turns for training, and training inputs
synthesised afresh from their targets when a degradation spec says so (`DecodeBatch`).
They run in Ray Data's `map_batches` (`jobs.data.stream.load_dataset`), in fresh worker
processes: nothing here imports torch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from translator import degrade as degradations
from translator import photometric, synthetic
from translator.images import read_picture
from translator.second_order import resize

# Target pixels of context kept on each side of a crop, where the stored image has them, when its
# input is synthesised: the blur at the crop's edge then sees real neighbours, not a mirror.
SYNTH_MARGIN = 16


def _decode_pixels(png: bytes) -> np.ndarray:
    """PNG bytes -> HxWx3: uint8 for an 8-bit shard, float32 in [0, 1] for a 16-bit one (from
    16-bit sources, full precision). Ingest stores 16-bit shards on the full 0-65535 scale (both
    sides of a pair on one scale), so every 16-bit PNG is divided by 65535, never by its own
    largest value (that would brighten a blurred input whose peak fell below a power of 2)."""
    if png[24:25] == b"\x10":  # IHDR bit depth 16
        pic = read_picture(png)
        return (pic.pixels * np.float32(pic.scale / 65535)).astype(np.float32)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _pixels(value) -> np.ndarray:
    """A stored image as a stream row holds it -> HxWx3 pixels: PNG bytes are decoded
    (`_decode_pixels`); a cached stream's rows are already decoded and pass as they are."""
    return value if isinstance(value, np.ndarray) and value.ndim == 3 else _decode_pixels(value)


def _unit(pixels: np.ndarray) -> np.ndarray:
    """`_decode_pixels`' array -> float32 in [0, 1]."""
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels


def _decode(png: bytes) -> np.ndarray:
    """PNG bytes -> HxWx3 float32 in [0, 1] (8- or 16-bit shards, `_decode_pixels`)."""
    return _unit(_decode_pixels(png))


def pair_scale(input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int:
    """N when the target (HxWxC) is exactly N times the input's height and width (a super-resolution
    pair, as ingest stores it), 1 for a same-size pair. Raises ValueError for any other sizes."""
    (h, w), (th, tw) = input_shape[:2], target_shape[:2]
    n = th // h if h else 0
    if n < 1 or (th, tw) != (n * h, n * w):
        raise ValueError(f"stored pair is {h}x{w} -> {th}x{tw}: the target must be the input's size or a whole "
                         "multiple of it")
    return n


class DecodeBatch:
    """numpy batch of PNG bytes -> float32 NCHW in [-1, 1], cropped to `image_size`.

    `image_size` is the INPUT crop's side; the target of an N-times super-resolution pair is cut at
    the same place N times larger (N from the two stored sizes, `pair_scale`), so every input pixel
    stays aligned with its N x N target block through crops, flips and turns.

    Training (augment=True): a random crop and a random horizontal flip, the same for the input
    and target of a pair (pix2pix's augmentation); with `rotate`, also a random multiple of 90
    degrees, so each crop is seen in any of its 8 orientations (the dihedral group D4, BasicSR's
    `augment(hflip=True, rotation=True)` for paired restoration). Validation: a centre crop.

    `degrade` (a spec of `translator.degrade`, training only): the stored input is not read; the
    input is synthesised from the target's crop (with up to `SYNTH_MARGIN` px of its surroundings)
    by a fresh random draw of the spec every time, rounded to 8-bit levels like a stored PNG's.
    `dead_leaves` (0-1, with `degrade`): that share of the crops has a synthetic dead-leaves image
    (`translator.synthetic`) as its target instead of the stored one, cut and degraded the same way.
    `color_jitter` ([0, 1), with `degrade`): the target's crop and margin get random brightness,
    contrast and saturation factors in [1 - j, 1 + j] (`translator.photometric`) before the input
    is synthesised from them, and the target is the jittered crop, rounded like a stored PNG.
    `multiscale` ([0, 1), with `degrade` and `image_size`): each crop is cut from its photo
    downscaled by a factor drawn uniformly from [1 - multiscale, 1], the same on both axes (Pillow's
    antialiased bicubic, `_resized`; an 8-bit photo stays on 8-bit levels), the factor raised
    where the photo's short side would otherwise be smaller than a crop; the input is then
    synthesised from that downscaled photo.
    """

    def __init__(self, columns: list[str], image_size: int | None, augment: bool, rotate: bool = False,
                 degrade: str | None = None, dead_leaves: float = 0.0, color_jitter: float = 0.0,
                 multiscale: float = 0.0):
        self.columns, self.image_size, self.augment, self.rotate = columns, image_size, augment, rotate
        self.degradation = degradations.parse(degrade) if degrade and augment else None
        self.dead_leaves = dead_leaves if self.degradation is not None else 0.0
        self.color_jitter = color_jitter if self.degradation is not None else 0.0
        # whole images (no image_size) keep their size: a batch of them is stacked as one array
        self.multiscale = multiscale if self.degradation is not None and image_size else 0.0
        self.scale = degradations.scale_of(degrade) if self.degradation else 1
        self.rng = None  # created per call: a pickled generator would repeat the same crops

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        s = self.image_size
        if s is None:
            return 0, 0, h, w
        if h < s or w < s:
            raise ValueError(f"stored images are {h}x{w}, smaller than --image-size {s}")
        if self.augment:
            top, left = int(self.rng.integers(0, h - s + 1)), int(self.rng.integers(0, w - s + 1))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return top, left, s, s

    def _synthesise(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A stored target (HxWx3, uint8 or float32) -> (input crop, target crop): the spec drawn
        afresh on the crop and its margin, the input cut from the result at the crop's place
        (with `multiscale`, all of it in the photo downscaled by this crop's factor)."""
        n, m = self.scale, SYNTH_MARGIN // self.scale  # m: the margin in input pixels
        full = self._downscaled_size(target.shape[:2])  # (H, W) of the photo this crop is cut from
        h, w = full[0] // n, full[1] // n  # the input's grid
        top, left, ch, cw = self._box(h, w)
        t0, l0 = max(0, top - m), max(0, left - m)
        b0, r0 = min(h, top + ch + m), min(w, left + cw + m)
        if full == target.shape[:2]:
            pixels = target[n * t0:n * b0, n * l0:n * r0]
        else:  # only the crop's region of the downscaled photo is resampled
            fy, fx = target.shape[0] / full[0], target.shape[1] / full[1]
            pixels = _resized(target, (n * l0 * fx, n * t0 * fy, n * r0 * fx, n * b0 * fy), (n * (r0 - l0), n * (b0 - t0)))
        region = _unit(pixels)
        at = (slice(n * (top - t0), n * (top - t0 + ch)), slice(n * (left - l0), n * (left - l0 + cw)))
        crop = pixels[at]
        if self.color_jitter:
            region = photometric.color_jitter(region, self.color_jitter, self.rng)
            if target.dtype == np.uint8:  # the jittered photo on 8-bit levels, as a stored one is
                region = np.round(region * 255) / np.float32(255)
            crop = region[at]
        made = np.clip(self.degradation(region, self.rng), 0.0, 1.0)[top - t0:top - t0 + ch, left - l0:left - l0 + cw]
        if target.dtype == np.uint8:  # what a stored 8-bit PNG input holds
            made = np.round(made * 255) / np.float32(255)
        return made.astype(np.float32), crop

    def _downscaled_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of a photo of `shape` after this crop's `multiscale` factor, one factor for both
        sides, raised so that the short side keeps one crop (in the target's pixels); `shape`
        itself without it, or where the factor rounds to the photo's own size."""
        if not self.multiscale:
            return shape
        least = self.scale * self.image_size
        f = max(self.rng.uniform(1 - self.multiscale, 1), least / min(shape))
        return tuple(min(side, max(least, round(side * f))) for side in shape)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.rng = np.random.default_rng()
        out: dict[str, list] = {c: [] for c in self.columns}
        for i in range(len(batch["key"])):
            flip = self.augment and self.rng.random() < 0.5
            turns = int(self.rng.integers(0, 4)) if self.augment and self.rotate else 0
            if self.degradation is not None:
                stored = _pixels(batch["target"][i])
                if self.dead_leaves and self.rng.random() < self.dead_leaves:
                    stored = self._leaves(stored)
                crops = self._synthesise(stored)
            else:
                crops = self._cut([_pixels(batch[c][i]) for c in self.columns])
            for c, arr in zip(self.columns, crops):
                if flip:
                    arr = arr[:, ::-1]
                if turns:
                    arr = np.rot90(arr, turns, axes=(0, 1))
                out[c].append(_unit(arr.transpose(2, 0, 1)))
        result = {c: np.stack(v) * np.float32(2.0) - np.float32(1.0) for c, v in out.items()}  # float32 already
        result["key"] = np.asarray(batch["key"])
        return result

    def _leaves(self, stored: np.ndarray) -> np.ndarray:
        """A dead-leaves target in place of `stored` (HxWx3): uint8 (what an 8-bit PNG holds) at
        the size one crop and its margin take (the whole of `stored`'s size without a crop size)."""
        n = self.scale
        side = max(stored.shape[:2]) if self.image_size is None else n * (self.image_size + 2 * (SYNTH_MARGIN // n))
        img = synthetic.dead_leaves(side, self.rng)
        if self.image_size is None:
            img = img[:stored.shape[0], :stored.shape[1]]
        return np.round(img * 255).astype(np.uint8)

    def _cut(self, decoded: list[np.ndarray]) -> list[np.ndarray]:
        """The stored images of a row (uint8 until cropped: converting the whole stored image to
        float first cost 7-34% of the pipeline's pairs/s, benchmarks/decode_formats.py) -> their
        crops at one place, a super-resolution target's N times larger."""
        top, left, h, w = self._box(*decoded[0].shape[:2])
        out = []
        for arr in decoded:
            n = pair_scale(decoded[0].shape, arr.shape)  # 1, or the target's N of an N-times SR pair
            out.append(arr[n * top:n * (top + h), n * left:n * (left + w)])
        return out


def _resized(pixels: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The `box` (left, top, right, bottom, in `pixels`' coordinates, fractions allowed) of an
    HxWx3 photo (uint8, or float32 in [0, 1]) resampled to `size` (width, height) with Pillow's
    antialiased bicubic filter, each channel in float32: the same pixels as that region of the
    whole photo resized (the filter's reach around the box is kept), clipped to [0, 1] (bicubic
    overshoots at edges); a uint8 photo's result rounded back to uint8, as a stored one is."""
    reach = int(np.ceil(2 * max((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1]))) + 1  # bicubic: 2 px out
    x0, y0 = max(0, int(box[0]) - reach), max(0, int(box[1]) - reach)
    x1, y1 = min(pixels.shape[1], int(np.ceil(box[2])) + reach), min(pixels.shape[0], int(np.ceil(box[3])) + reach)
    part = _unit(pixels[y0:y1, x0:x1])
    shifted = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    out = np.clip(resize(part, size, Image.Resampling.BICUBIC, box=shifted), 0.0, 1.0)
    return np.round(out * 255).astype(np.uint8) if pixels.dtype == np.uint8 else out


class DecodeRows:
    """numpy batch of PNG bytes -> the same rows decoded (`_decode_pixels`: HxWx3 uint8 for an
    8-bit shard, float32 in [0, 1] for a 16-bit one), what a cached stream keeps in the object
    store; `DecodeBatch` crops them as it crops PNG bytes."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {c: [_decode_pixels(v) for v in batch[c]] for c in self.columns}
        return {"key": np.asarray(batch["key"]), **out}
