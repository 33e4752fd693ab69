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

import logging

import ray.data

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.storage import Storage, arrow_filesystem
from jobs.data.decode import DecodeBatch, DecodeRows
from registry.manifest import Manifest, dataset_prefix, read_manifest
from translator import degrade as degradations

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
