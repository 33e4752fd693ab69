"""Building one shard of an ingest (runs in a worker process): each planned row's images are
read, paired, resized, cropped and degraded, encoded as PNG and written as one Parquet object,
then its progress marker (shard first: a marker always names a complete shard)."""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cluster.settings import Settings
from cluster.storage import Storage
from jobs.data.plan import IngestOptions, Row, ShardPlan, stable_seed
from jobs.data.sources import SourceFile
from registry.manifest import Shard, dataset_prefix
from translator import degrade, images, samples

MAX_PIXELS = 100_000_000  # larger files are skipped as decompression bombs


class SkipFile(Exception):
    """A source file that is readable but not usable (the message is the reason recorded)."""


# A source image is a PIL image (8-bit sources: L, LA, RGB or RGBA, as the source was) or, for
# a wider source (16-bit, 32-bit, float), an HxWxC float32 array in [0, 1] (normalised by its own
# range; C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), so its precision reaches the stored 16-bit PNG
# instead of being cut to 8 here. Grey stays grey and alpha is kept in what is stored.
Picture = Image.Image | np.ndarray


def _size(img: Picture) -> tuple[int, int]:
    return img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])


def _resize(img: Picture, size: tuple[int, int], reducing_gap: float | None = None) -> Picture:
    if isinstance(img, Image.Image):
        return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=reducing_gap)
    chans = [np.asarray(Image.fromarray(img[..., c], mode="F").resize(size, Image.Resampling.BICUBIC))
             for c in range(img.shape[2])]
    return np.clip(np.stack(chans, -1), 0.0, 1.0)


def _crop(img: Picture, box: tuple[int, int, int, int]) -> Picture:
    if isinstance(img, Image.Image):
        return img.crop(box)
    left, top, right, bottom = box
    return img[top:bottom, left:right]


def _fit(img: Picture, size: int | None, crops: int, crop: int, seed: int) -> tuple[int, int, int, int] | None:
    """The box (in a resized image) to cut: centre crop, or the crop-th random crop."""
    if size is None:
        return None
    w, h = _size(img)
    if crops == 0:
        return ((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size)
    rng = random.Random(seed)
    left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return (left, top, left + size, top + size)


def _resize_for(img: Picture, size: int | None, crops: int) -> Picture:
    """Shorter side to `size` (centre-crop mode), or only up to `size` when cutting random crops."""
    if size is None:
        return img
    w, h = _size(img)
    short = min(w, h)
    if crops == 0 or short < size:
        scale = size / short
        return _resize(img, (max(size, round(w * scale)), max(size, round(h * scale))), reducing_gap=3.0)
    return img


def _load(f: SourceFile, settings: Settings, cache: dict) -> tuple[Picture, float | None]:
    """-> (picture, scale): a wider-than-8-bit file as float in [0, 1] with the scale it was
    divided by (see images.Picture.scale), an 8-bit one as a PIL image and None."""
    if f.key not in cache:
        data = f.read(settings)
        img = images.open_or_none(data)
        w, h = (img.width, img.height) if img is not None else samples.tiff_size(data)
        if w * h > MAX_PIXELS:
            raise ValueError(f"{w}x{h} is over the {MAX_PIXELS // 1_000_000} MP limit")
        if img is not None and not images.is_high_bit(data, img):
            img.load()
            rgb, alpha = images.split_alpha(img)
            pic = rgb.convert("L") if img.mode in ("1", "L", "LA", "La") else rgb
            if alpha is not None:
                pic.putalpha(alpha)
            cache[f.key] = (pic, None)
        else:
            pic = images.read_picture(data, img)
            chans = [pic.pixels[..., :1] if pic.gray else pic.pixels]
            if pic.alpha is not None:
                chans.append(samples.normalise(pic.alpha, *samples.value_range(pic.alpha))[..., None])
            cache[f.key] = (np.concatenate(chans, -1), pic.scale)
    return cache[f.key]


def _colour(img: Picture) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (HxWx3 float32 colour in [0, 1] (grey repeated), HxWx1 alpha in [0, 1] or None)."""
    if isinstance(img, Image.Image):
        alpha = np.asarray(img.getchannel("A"), np.float32)[..., None] / 255.0 if img.mode in ("LA", "RGBA") else None
        return images.to_array(img.convert("RGB")), alpha
    n = 1 if img.shape[2] in (1, 2) else 3
    colour = np.repeat(img[..., :1], 3, -1) if n == 1 else img[..., :3]
    return colour, (img[..., n:] if img.shape[2] in (2, 4) else None)


def _degrade(img: Picture, spec: str, seed: int) -> Picture:
    """The degraded copy of `img`, in its own layout: grey stays grey (BT.601 luma of the result),
    alpha is carried unchanged."""
    colour, alpha = _colour(img)
    out = degrade.apply(spec, colour, seed)
    if alpha is not None and out.shape[:2] != alpha.shape[:2]:  # down:N: alpha shrinks by its own pass
        alpha = np.clip(_resize(alpha, (out.shape[1], out.shape[0])), 0.0, 1.0)
    if isinstance(img, Image.Image):
        res = images.from_array(out).convert("L" if img.mode in ("L", "LA") else "RGB")
        if alpha is not None:
            res.putalpha(Image.fromarray((alpha[..., 0] * 255 + 0.5).astype(np.uint8), "L"))
        return res
    out = (out @ images.LUMA)[..., None] if img.shape[2] in (1, 2) else out
    return np.concatenate([out, alpha], -1).astype(np.float32) if alpha is not None else out


def common_scale(a: Picture, scale_a: int | None, b: Picture, scale_b: int | None) -> tuple[Picture, Picture]:
    """Two 16-bit sides of an aligned pair, each normalised by its own 2**k - 1, put on the
    larger of the two scales: the same stored code value then means the same level on both
    sides (A peaking at 3000 (/4095) and B at 5000 (/8191) would otherwise disagree by 2x).
    Float HxWx3 arrays in [0, 1] in and out; anything else is returned unchanged."""
    if scale_a is None or scale_b is None or scale_a == scale_b:
        return a, b
    common = max(scale_a, scale_b)

    def rescale(x: np.ndarray, k: float) -> np.ndarray:  # colour only: alpha keeps its own scale
        out = x.astype(np.float32, copy=True)
        n = 1 if x.shape[-1] in (1, 2) else 3
        out[..., :n] *= np.float32(k)
        return out
    return rescale(a, scale_a / common), rescale(b, scale_b / common)


def _load_pair(row: Row, settings: Settings, cache: dict) -> tuple[Picture, Picture]:
    """The two files of an aligned row on one level scale; both float when either is 16-bit."""
    (a, scale_a), (b, scale_b) = (_load(f, settings, cache) for f in row.files)
    a, b = common_scale(a, scale_a, b, scale_b)
    if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):  # one 16-bit file: both go float
        a, b = (np.asarray(x, np.float32).reshape(x.height, x.width, -1) / 255.0
                if isinstance(x, Image.Image) else x for x in (a, b))
    return a, b


def _sr_pair(lr: Picture, hr: Picture, n: int) -> Picture:
    """The HR side of an LR/HR pair at exactly n times the LR's size. SkipFile when its size is
    not n times the LR's within 1 px (rounding when the HR was shrunk); a 1 px excess is cropped,
    a 1 px shortfall resized."""
    (w, h), (hw, hh) = _size(lr), _size(hr)
    if abs(hw - n * w) > 1 or abs(hh - n * h) > 1:
        ratio = f"{hw / w:.2f}x{hh / h:.2f}" if w and h else "?"
        raise SkipFile(f"LR {w}x{h} and HR {hw}x{hh} are not a {n}x pair (ratio {ratio}); the dataset's scale is "
                       f"{n}: HR must be {n} times the LR size, within 1 px")
    if (hw, hh) == (n * w, n * h):
        return hr
    if hw >= n * w and hh >= n * h:
        return _crop(hr, (0, 0, n * w, n * h))
    return _resize(hr, (n * w, n * h))


def _sr_crop(lr: Picture, hr: Picture, n: int, opts: IngestOptions, crop: int, seed: int) -> list[Picture]:
    """LR/HR pair -> [LR crop, HR crop]: the LR crop is (size / n) px (centre, or the crop-th random
    one), the HR crop the n-times box at the same place (aligned pixel for pixel). Never resized
    (that would change the pair's own degradation), except an LR shorter than its crop, which is
    upscaled to it, and the HR with it."""
    if opts.size is None:
        return [lr, hr]
    side = opts.size // n
    if min(_size(lr)) < side:
        lr = _resize_for(lr, side, 0)
        hr = _resize(hr, tuple(n * v for v in _size(lr)), reducing_gap=3.0)
    left, top, right, bottom = _fit(lr, side, opts.crops, crop, seed)
    return [_crop(lr, (left, top, right, bottom)), _crop(hr, (n * left, n * top, n * right, n * bottom))]


def pair_scale(plans: list[ShardPlan], settings: Settings) -> int:
    """The whole scale of LR/ + HR/ pairs from the first planned pair's image sizes (headers only);
    1 when no row is planned or its LR is not smaller."""
    row = next((r for p in plans for r in p.rows if len(r.files) == 2), None)
    if row is None:
        return 1
    (w, _), (hw, _) = (Image.open(io.BytesIO(f.read(settings))).size for f in row.files)
    return max(1, min(round(hw / max(w, 1)), degrade.MAX_DOWN))


def _row_images(row: Row, opts: IngestOptions, settings: Settings, cache: dict) -> list[Image.Image]:
    seed = stable_seed(opts.seed, row.key)
    n = opts.scale or 1
    if len(row.files) == 2 and n > 1:  # LR/ HR/ folders: super-resolution pairs
        a, b = _load_pair(row, settings, cache)
        return _sr_crop(a, _sr_pair(a, b, n), n, opts, row.crop, seed)
    if len(row.files) == 2:  # aligned A/ B/ folders
        a, b = _load_pair(row, settings, cache)
        b = _resize(b, _size(a)) if _size(b) != _size(a) else b
        pair = [a, b]
    else:
        img = _load(row.files[0], settings, cache)[0]
        if opts.kind == "aligned":  # A|B side by side in one file
            w, h = _size(img)
            if abs(w - 2 * h) > 1:
                raise SkipFile(f"{w}x{h} is not an A|B side-by-side pair (width must be twice the height, "
                               "within 1 px)")
            half = w // 2  # an odd width drops the middle (seam) column, so A and B stay aligned
            pair = [_crop(img, (0, 0, half, h)), _crop(img, (w - half, 0, w, h))]
        else:
            pair = [img]
    if opts.kind == "aligned" and opts.direction == "BtoA":
        pair.reverse()
    pair = [_resize_for(im, opts.size, opts.crops) for im in pair]
    box = _fit(pair[0], opts.size, opts.crops, row.crop, seed)
    if box is None and n > 1:  # a whole image shrunk by n: its target cut to a multiple of n first
        w, h = _size(pair[0])
        box = (0, 0, w - w % n, h - h % n)
        if box[2] < n or box[3] < n:
            raise SkipFile(f"{w}x{h} is smaller than one {n}x{n} block of the {n}x shrink")
    pair = [_crop(im, box) if box else im for im in pair]
    if opts.kind == "synth":
        pair = [_degrade(pair[0], opts.degrade, seed), pair[0]]
    return pair


def _png(img: Picture) -> bytes:
    """8-bit PNG for 8-bit sources; 16-bit PNG (full 0-65535 range) for wider ones; grey,
    grey+alpha, RGB or RGBA as the source was."""
    if isinstance(img, Image.Image):
        return images.encode(img, "PNG", compress_level=6)
    colour, alpha = _colour(img)
    alpha16 = None if alpha is None else samples.restore(np.clip(alpha[..., 0], 0, 1), "uint16", 0, 65535)
    pic = images.Picture(colour, alpha16, img.shape[2] in (1, 2), 16, 65535, dtype="uint16")
    return images.write_picture(colour, pic, "png")[0]


def build_shard(settings: Settings, opts: IngestOptions, plan: ShardPlan, fingerprint: str) -> tuple[Shard, list]:
    storage = Storage(settings)
    cache: dict = {}
    keys, cols_a, cols_b, skipped, sides = [], [], [], [], []
    bad: set[str] = set()
    small: set[str] = set()  # sources upscaled to the crop size
    identical = 0
    for row in plan.rows:
        if any(f.key in bad for f in row.files):
            continue
        try:
            imgs = _row_images(row, opts, settings, cache)
        except Exception as e:  # unreadable, truncated, too large, not a pair: skip the file, keep going
            for f in row.files:
                bad.add(f.key)
            reason = str(e) if isinstance(e, SkipFile) else f"{type(e).__name__}: {e}"
            skipped.append({"file": row.files[0].key, "reason": reason[:200]})
            continue
        keys.append(row.key)
        source = cache.get(row.files[0].key, (None,))[0]
        if opts.size and source is not None and min(_size(source)) < opts.size:
            small.add(row.files[0].key)
        identical += len(imgs) > 1 and np.array_equal(np.asarray(imgs[0]), np.asarray(imgs[1]))
        sides.append(min(imgs[0].size) if isinstance(imgs[0], Image.Image) else min(imgs[0].shape[:2]))
        cols_a.append(_png(imgs[0]))
        cols_b.append(_png(imgs[1]) if len(imgs) > 1 else None)
    if plan.domain:
        table = pa.table({"key": keys, "domain": [plan.domain] * len(keys), "image": pa.array(cols_a, pa.binary())})
    else:
        table = pa.table({"key": keys, "input": pa.array(cols_a, pa.binary()), "target": pa.array(cols_b, pa.binary())})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", row_group_size=64)
    data = buf.getvalue()
    shard = Shard(plan.path, len(keys), hashlib.sha256(data).hexdigest(), len(data), plan.domain,
                  min(sides) if sides else None, sorted(small), int(identical))
    prefix = dataset_prefix(opts.name)
    storage.put_bytes(prefix + plan.path, data)
    marker = {"fingerprint": fingerprint, "shard": asdict(shard), "skipped": skipped}
    storage.put_bytes(prefix + plan.marker, json.dumps(marker).encode())
    return shard, skipped
