"""Stream a dataset from the object store into Ray Data (and from there into Ray Train).

Shards are read straight from S3 through a pyarrow filesystem built from the settings; PNG
decoding and random crop/flip augmentation run in `map_batches`, beside training, so nothing
is downloaded in full first. A training split whose decoded pixels fit a share of the cluster's
object store memory is decoded ONCE and kept there (`load_dataset`'s `cache_bytes`): every pass
then only crops, flips and converts, instead of decoding every PNG again on the CPUs the
training shares (`benchmarks/decode_formats.py`: a 256 px pair decodes at ~270-360 pairs/s per
core, its crop from decoded pixels at ~50,000).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import ray.data
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.storage import Storage, arrow_filesystem
from registry.manifest import Manifest, dataset_prefix, read_manifest
from translator import degrade as degradations
from translator import photometric, synthetic
from translator.images import read_picture

log = logging.getLogger("jobs.data.stream")

# Ray Data runs each `map_batches` task at a fixed cost of about 15 ms of CPU (scheduling, the
# block's metadata and stats: a `top` sample found 15% of a core for ~9 tasks a second) beside
# the work itself; a 64 px crop is ~0.1 ms of work, so 16-row tasks spent most of the data
# pipeline's CPU on the fixed cost, on the cores the training workers use (benchmarks/RESULTS.md,
# "Rows a crop task makes"). Small crops therefore go in larger tasks: about TASK_PIXELS output
# pixels a task (the target's, for super-resolution), between MIN_TASK_ROWS and MAX_TASK_ROWS
# rows (large crops keep small blocks, whose object-store bytes and first-batch wait grow with
# the rows). A decoded-once split stays in blocks of MIN_TASK_ROWS, each reordered on its own
# every pass: a crop task gathers several of them, so batches mix as many stored runs as before.
TASK_PIXELS = 64 * 64 * 64
MIN_TASK_ROWS, MAX_TASK_ROWS = 16, 64


def task_rows(image_size: int | None, scale: int = 1) -> int:
    """Rows one crop/decode task of a stream makes for input crops of `image_size` px (None:
    images of their stored size) whose targets are `scale` times larger -> an int in
    [MIN_TASK_ROWS, MAX_TASK_ROWS]; 64 px -> 64, 96 px -> 28, 128 px -> 16, 32 px at 4x -> 16."""
    if not image_size:
        return MIN_TASK_ROWS
    side = image_size * max(1, scale)
    return max(MIN_TASK_ROWS, min(MAX_TASK_ROWS, TASK_PIXELS // (side * side)))


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
    out = np.clip(np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(part[..., c]), "F").resize(
        size, Image.Resampling.BICUBIC, box=shifted)) for c in range(part.shape[2])], -1), 0.0, 1.0)
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


def decoded_bytes(manifest: Manifest, split: str, columns: list[str], domain: str | None = None) -> int | None:
    """Bytes of a split's `columns` decoded at 8 bits (rows x stored side^2 x 3 each; a
    super-resolution input counted at its target's size, an overestimate); None for a dataset
    that kept its images' own sizes (`--size 0`), whose size the manifest does not give."""
    if manifest.image_size is None:
        return None
    rows = sum(s.rows for s in manifest.shards(split, domain))
    return rows * len(columns) * manifest.image_size ** 2 * 3


def cache_budget(share: float) -> int:
    """`share` (0-1; the setting IMG2IMG_DECODE_CACHE_SHARE) of the Ray cluster's object store
    memory in bytes (0 when Ray does not say): what one training stream's decoded pixels may hold
    (`load_dataset`'s `cache_bytes`)."""
    return int(share * float(ray.cluster_resources().get("object_store_memory", 0)))


def check_shards(storage: Storage, manifest: Manifest, split: str, domain: str | None = None) -> list[str]:
    """Object paths of a split's shards, after checking each one's size against the manifest
    (cheap; `img2img data verify` recomputes the full checksums)."""
    sizes = {o.key: o.size for o in storage.list(dataset_prefix(manifest.name) + f"{split}/")}
    paths = []
    for shard in manifest.shards(split, domain):
        key = dataset_prefix(manifest.name) + shard.path
        if sizes.get(key) != shard.bytes:
            found = "missing" if key not in sizes else f"{sizes[key]} bytes, manifest says {shard.bytes}"
            raise Img2ImgError(f"shard {shard.path} of dataset {manifest.name!r} does not match its manifest "
                               f"({found}); run `img2img data verify {manifest.name}`")
        if shard.rows:
            paths.append(f"{storage.bucket}/{key}")
    if not paths:
        raise Img2ImgError(f"dataset {manifest.name!r} has no rows in split {split!r}"
                           + (f" for domain {domain}" if domain else ""))
    return paths


def read_parquet_v1(paths: list[str], filesystem, shuffle_files: bool = False):
    """ray.data.read_parquet through Ray Data's V1 parquet reader; `shuffle_files`: every
    execution (a training pass) reads the files in a fresh random order (Ray Data's file
    shuffle, decided when the pass's read tasks are made, so it streams).

    Ray 2.60's default (DataSourceV2) lists files and reads footers on EVERY epoch with a pool
    of 32 short-lived FooterReader actors: measured on 2 CPU cores, 1.6-10 s per epoch of a
    128-row split (most of a small epoch), against 0.4 s for V1, which reads the footers once
    when the dataset is created. Our shards are few and listed in the manifest, so V1 fits.

    Ray Data's own retry of S3 errors (`retried_io_errors`: 10 tries, up to 32 s apart) is left
    off for this dataset: `filesystem` (`arrow_filesystem`) retries them already, and the two
    layers together would hold a job for minutes against a store that stays down before it fails
    with `arrow_unavailable`'s line.
    """
    ctx = ray.data.DataContext.get_current()
    saved = ctx.use_datasource_v2, ctx.retried_io_errors
    ctx.use_datasource_v2, ctx.retried_io_errors = False, []
    try:
        return ray.data.read_parquet(paths, filesystem=filesystem, shuffle="files" if shuffle_files else None)
    finally:
        ctx.use_datasource_v2, ctx.retried_io_errors = saved


def load_dataset(name: str, split: str = "train", settings: Settings | None = None, *,
                 image_size: int | None = None, augment: bool | None = None, domain: str | None = None,
                 batch_size: int | None = None, rotate: bool = False, decode: bool = True, repeat: int = 1,
                 degrade: str | None = None, cache_bytes: int = 0, dead_leaves: float = 0.0, color_jitter: float = 0.0,
                 multiscale: float = 0.0, shuffle: bool = False):
    """-> ray.data.Dataset of {"key", "input", "target"} (paired) or {"key", "image"} for one
    domain ("a" or "b") of an unpaired dataset; images float32 NCHW in [-1, 1].
    augment (default: on for "train"): random crops and flips; `rotate` adds 90-degree turns.
    Without `image_size`, images keep their stored size; for a dataset ingested with `--size 0`
    (sizes vary) every batch then holds one image, whatever `batch_size` says. batch_size: the
    rows one crop/decode task makes (default `task_rows(image_size, the dataset's scale)`). decode=False: the
    stored PNG bytes as they are (decode them with `DecodeBatch` where they are used, e.g. after
    choosing which rows a worker keeps). repeat: each pass over the stream reads every row this
    many times (each time with its own random crop), so a small split makes fewer, longer passes.
    degrade: a paired training stream's inputs synthesised from its targets with this spec
    (`DecodeBatch`; resolve the variant's `degrade` setting with `synthesis` first), and with it
    `dead_leaves`, the share of crops whose target is a dead-leaves image, `color_jitter`, the
    strength of the targets' brightness/contrast/saturation jitter, and `multiscale`, how far
    below 1 the factor a crop's photo is downscaled by may go (`DecodeBatch`).
    cache_bytes: when the split's decoded pixels (`decoded_bytes`) fit in it, they are decoded
    once, here, and kept in Ray's object store for the dataset's life (`cache_budget` gives a
    share of it); every read then crops from them. 0: every read decodes the PNGs again.
    shuffle: every pass in a fresh order, streamed: the cached split's blocks (all in the object
    store already) are reordered before they are cropped; shards read from storage are read in a
    fresh file order. Never a reorder after the crops: that is an all-to-all barrier, and the
    workers' first batch of every pass would wait for the whole pass to be decoded and cropped
    (a 2-worker autoencoder job waited 22 ms a step instead of 8; a large dataset's pass would
    sit whole in the object store before its first step).
    Rows mix further in the workers' local shuffle buffer (`jobs.training.worker.cycle_batches`)."""

    settings = settings or get_settings()
    storage = Storage(settings)
    manifest = read_manifest(storage, name)
    if manifest.kind == "unpaired" and domain not in ("a", "b"):
        raise Img2ImgError(f"dataset {name!r} is unpaired: load domain 'a' or 'b'")
    if manifest.kind == "paired" and domain is not None:
        raise Img2ImgError(f"dataset {name!r} is paired: it has no domains")
    paths = check_shards(storage, manifest, split, domain)
    columns = ["input", "target"] if manifest.kind == "paired" else ["image"]
    if not decode:
        return read_parquet_v1(paths * max(1, repeat), arrow_filesystem(settings)).select_columns(["key", *columns])
    decoder = DecodeBatch(columns, image_size, split == "train" if augment is None else augment, rotate, degrade,
                          dead_leaves, color_jitter, multiscale)
    # a synthesised input is never read: only the targets are worth keeping
    needed = ["target"] if decoder.degradation is not None else columns
    size = decoded_bytes(manifest, split, needed, domain)
    batch_size = batch_size or task_rows(image_size, manifest.scale)
    ds = _decoded_once(paths, settings, needed, size, cache_bytes, repeat) if size and size <= cache_bytes else None
    if ds is None:
        ds = read_parquet_v1(paths * max(1, repeat), arrow_filesystem(settings),
                             shuffle_files=shuffle).select_columns(["key", *columns])
    elif shuffle:
        ds = ds.randomize_block_order()
    if image_size is None and manifest.image_size is None:
        batch_size = 1  # whole images of an `--size 0` dataset differ in size: one a batch, never stacked
    return ds.map_batches(decoder, batch_format="numpy", batch_size=batch_size)


def synthesis(setting: str, manifest: Manifest) -> str | None:
    """A variant's `degrade` setting (`translator.config.TrainConfig`) for this dataset -> the spec
    its training inputs are synthesised with, or None for the stored inputs: `stored` -> None;
    `auto` -> the spec a synthetic paired dataset was ingested with (manifest `degradation`), else
    None; a spec -> itself. Raises Img2ImgError for a spec on an unpaired dataset or one whose
    scale (`translator.degrade.scale_of`) is not the dataset's."""
    if setting == "stored":
        return None
    if setting == "auto":
        return manifest.degradation if manifest.kind == "paired" and manifest.degradation else None
    if manifest.kind != "paired":
        raise Img2ImgError(f"--set degrade={setting} synthesises a paired dataset's inputs from its targets, and "
                           f"dataset {manifest.name!r} is unpaired; drop it")
    scale = degradations.scale_of(setting)
    if scale != manifest.scale:
        made = f"inputs {scale}x smaller than their targets" if scale > 1 else "inputs of their targets' size"
        held = f"{manifest.scale}x super-resolution pairs" if manifest.scale > 1 else "same-size pairs"
        raise Img2ImgError(f"--set degrade={setting} makes {made}, and dataset {manifest.name!r} holds {held}; "
                           "use a spec of the dataset's scale")
    return setting


def _decoded_once(paths: list[str], settings: Settings, columns: list[str], estimate: int, cache_bytes: int,
                  repeat: int):
    """The split's rows decoded once and kept in the object store, read `repeat` times a pass
    (Dataset.union of the one materialized copy) -> Dataset, or None when the decoded rows came
    out over twice `cache_bytes` (16-bit shards decode to float32, 4 bytes a channel): the
    stream then decodes on every read, as without a cache."""
    base = read_parquet_v1(paths, arrow_filesystem(settings)).select_columns(["key", *columns])
    base = base.map_batches(DecodeRows(columns), batch_format="numpy", batch_size=MIN_TASK_ROWS).materialize()
    held = base.size_bytes()
    if held > 2 * max(cache_bytes, estimate):
        log.warning("decoded training rows take %.0f MB, over the cache's %.0f MB: decoding on every read",
                    held / 1e6, cache_bytes / 1e6)
        return None
    # printed, not logged: job drivers log warnings only, and this belongs in the job's log
    print(f"training rows decoded once: {held / 1e6:.0f} MB kept in the object store, read {max(1, repeat)} "
          "time(s) a pass", flush=True)
    return base.union(*[base] * (max(1, repeat) - 1)) if repeat > 1 else base
