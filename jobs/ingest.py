"""`img2img data ingest`: images -> Parquet shards of PNG pairs + a manifest, on the object store.

The work is planned up front as a deterministic list of rows (file, crop, copy, seed), cut into
shards, and the shards are built in parallel processes. Every finished shard leaves a progress
marker; a re-run with the same inputs and options skips shards already written and verified,
so a killed ingest resumes without duplicates.

Readers find shards only through the manifest, so the manifest is written last and is the
commit point: shard names carry a version (a hash of the ingest's fingerprint and the manifest
it replaces), so an `--overwrite` never touches the old dataset's shards while it builds the new
ones; the old objects are deleted only after the new manifest is in place. A failed or killed
overwrite leaves the old dataset as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.manifest import PAIRED_KINDS, Manifest, Shard, dataset_prefix, manifest_key, verify_shard
from jobs.sources import SourceFile, list_sample, scan_source
from translator import degrade, images

log = logging.getLogger(__name__)
DEFAULT_DEGRADE = "gaussian:1.5"
MAX_PIXELS = 100_000_000  # larger files are skipped as decompression bombs
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ALIGNED_LAYOUTS = ("side-by-side A|B images (width twice the height) in any folders; "
                   "A/ + B/ folders holding files of the same names; "
                   "trainA/ + trainB/ (optionally testA/ + testB/ for validation) holding files of the same names")
# (input folder, target folder, split) of the aligned folder layouts, lower-cased
PAIR_FOLDERS = (("a", "b", "train"), ("traina", "trainb", "train"), ("testa", "testb", "val"),
                ("vala", "valb", "val"))


class SkipFile(Exception):
    """A source file that is readable but not usable (the message is the reason recorded)."""


@dataclass
class IngestOptions:
    name: str
    kind: str = "synth"  # synth | aligned | unaligned
    degrade: str | None = None  # synth only; None -> DEFAULT_DEGRADE
    copies: int = 1
    direction: str = "AtoB"
    size: int | None = 256
    crops: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    shard_rows: int = 256
    source_label: str | None = None  # what the manifest records as the source, when not the path itself

    def __post_init__(self) -> None:
        if self.kind == "synth" and self.degrade is None:
            self.degrade = DEFAULT_DEGRADE

    def validate(self) -> None:
        if self.kind not in PAIRED_KINDS:
            raise Img2ImgError(f"unknown kind {self.kind!r}: use synth, aligned or unaligned")
        if self.kind == "synth":
            if not self.degrade:
                raise Img2ImgError("--kind synth needs --degrade SPEC, e.g. gaussian:1.5")
            degrade.parse(self.degrade)
        elif self.degrade is not None:
            raise Img2ImgError(f"--degrade applies to --kind synth only: --kind {self.kind} pairs come from the "
                               "files themselves; drop --degrade")
        if self.direction not in ("AtoB", "BtoA"):
            raise Img2ImgError("--direction must be AtoB or BtoA")
        if self.direction == "BtoA" and self.kind != "aligned":
            raise Img2ImgError(f"--direction applies to --kind aligned only (got --kind {self.kind}); drop it")
        if self.copies != 1 and self.kind != "synth":
            raise Img2ImgError(f"--copies applies to --kind synth only (got --kind {self.kind}); drop it")
        if not 0 <= self.val_fraction < 1:
            raise Img2ImgError(f"--val-fraction must be at least 0 and below 1 (got {self.val_fraction})")
        for flag, value, low in (("--copies", self.copies, 1), ("--shard-rows", self.shard_rows, 1),
                                 ("--crops", self.crops, 0)):
            if value < low:
                raise Img2ImgError(f"{flag} must be at least {low} (got {value})")
        if self.size is not None and self.size < 8:
            raise Img2ImgError(f"--size must be at least 8 pixels, or 0 to keep the size (got {self.size})")
        if self.size is None and self.crops:  # random crops of the whole image would all be the whole image
            raise Img2ImgError(f"--crops {self.crops} cuts random SIZE x SIZE crops, so it needs a --size above 0 "
                               "(--size 0 keeps each whole image, one row a photo)")
        if not NAME_RULE.fullmatch(self.name or ""):
            raise Img2ImgError(f"bad dataset name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit")


@dataclass
class Row:
    key: str
    files: tuple[SourceFile, ...]  # one file, or (A, B) for aligned folders
    crop: int = 0
    copy: int = 0
    domain: str | None = None


@dataclass
class ShardPlan:
    split: str
    index: int
    rows: list[Row]
    domain: str | None = None
    version: str = ""  # set by `run`: keeps a new dataset's shard names apart from the one it replaces

    @property
    def path(self) -> str:
        stem = f"{self.domain}-{self.index:05d}" if self.domain else f"shard-{self.index:05d}"
        return f"{self.split}/{stem}.{self.version}.parquet" if self.version else f"{self.split}/{stem}.parquet"

    @property
    def marker(self) -> str:
        """The progress marker's key relative to the dataset prefix."""
        return f"_ingest/{self.path.replace('/', '-')}.json"


@dataclass
class IngestResult:
    manifest: Manifest
    written: int = 0
    reused: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


# ---- planning ---------------------------------------------------------------------------------
def _split_keys(keys: list[str], fraction: float, seed: int) -> set[str]:
    """The keys that go to validation: a seeded choice of whole source files (no leakage)."""
    if fraction <= 0 or len(keys) < 2:
        return set()
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    return set(order[: max(1, round(len(keys) * fraction))])


def _top(f: SourceFile) -> str:
    return f.key.split("/")[0].lower() if "/" in f.key else ""


def _aligned_folders(files: list[SourceFile]) -> tuple[dict[str, tuple[str, tuple]], list[dict[str, str]]] | None:
    """Aligned pairs from A/+B/ or trainA/+trainB/ (+ testA/+testB/) folders, matched by file
    name -> ({name: (split, (input file, target file))}, skips), or None when the source has
    none of those folders (side-by-side A|B images)."""
    tops = {_top(f) for f in files}
    present = [p for p in PAIR_FOLDERS if p[0] in tops or p[1] in tops]
    if not present:
        return None
    shown = {_top(f): f.key.split("/")[0] for f in files}  # folder names as the user spelled them
    for a, b, _ in present:
        if a not in tops or b not in tops:
            have, missing = (a, b) if a in tops else (b, a)
            missing = missing[:-1] + missing[-1].upper()  # traina -> trainA
            raise Img2ImgError(f"--kind aligned: found folder {shown[have]}/ but no {missing}/ beside it; "
                               f"accepted layouts: {ALIGNED_LAYOUTS}")
    if not any(split == "train" for *_, split in present):
        raise Img2ImgError(f"--kind aligned: found only test/val folders; accepted layouts: {ALIGNED_LAYOUTS}")
    groups: dict[str, tuple[str, tuple]] = {}
    skipped = []
    folders = {x for a, b, _ in present for x in (a, b)}
    for f in files:
        if _top(f) not in folders:
            skipped.append({"file": f.key, "reason": "outside the paired folders "
                                                     f"({', '.join(sorted(shown[x] + '/' for x in folders))})"})
    for a, b, split in present:
        side_a = {f.key.split("/", 1)[1]: f for f in files if _top(f) == a}
        side_b = {f.key.split("/", 1)[1]: f for f in files if _top(f) == b}
        for n in sorted(set(side_a) ^ set(side_b)):
            f, other = (side_a[n], b) if n in side_a else (side_b[n], a)
            skipped.append({"file": f.key, "reason": f"no file of the same name in {shown[other]}/"})
        for n in sorted(set(side_a) & set(side_b)):  # matched by file name, never by position
            groups[f"{side_a[n].key.split('/')[0]}/{n}"] = (split, (side_a[n], side_b[n]))
    if not groups:
        raise Img2ImgError("--kind aligned: the paired folders share no file names (pairs are matched by name); "
                           f"accepted layouts: {ALIGNED_LAYOUTS}")
    return groups, skipped


def _unaligned_domains(files: list[SourceFile]) -> dict[str, tuple[list[SourceFile], list[SourceFile]]]:
    """domain ('a'/'b') -> (train files, test files) from trainA/ trainB/ [testA/ testB/]."""
    out = {}
    for domain in ("a", "b"):
        train = [f for f in files if _top(f) == f"train{domain}"]
        test = [f for f in files if _top(f) == f"test{domain}"]
        if not train:
            found = sorted({f.key.split("/")[0] + "/" for f in files if "/" in f.key}) or ["no folders"]
            raise Img2ImgError(f"--kind unaligned needs folders trainA/ and trainB/ (optionally testA/ and "
                               f"testB/ for validation); there is no train{domain.upper()}/ (found: {', '.join(found)})")
        out[domain] = (train, test)
    return out


def plan_rows(files: list[SourceFile], opts: IngestOptions) -> dict[tuple[str, str | None], list[Row]]:
    """(split, domain) -> rows, in a deterministic order."""
    out: dict[tuple[str, str | None], list[Row]] = {}
    n_crops = max(1, opts.crops)
    if opts.kind == "unaligned":
        for domain, (train, test) in _unaligned_domains(files).items():
            val_keys = set() if test else _split_keys([f.key for f in train], opts.val_fraction, opts.seed)
            for f in train + test:
                split = "val" if f in test or f.key in val_keys else "train"
                for c in range(n_crops):
                    out.setdefault((split, domain), []).append(Row(f"{f.key}#{c}", (f,), c, 0, domain))
        return out
    folders = _aligned_folders(files) if opts.kind == "aligned" else None
    if folders is not None:
        named = folders[0]
        groups = {k: fs for k, (_, fs) in named.items()}
        held_out = {k for k, (split, _) in named.items() if split == "val"}
        val_keys = held_out or _split_keys(list(groups), opts.val_fraction, opts.seed)
    else:
        groups = {f.key: (f,) for f in files}
        val_keys = _split_keys(list(groups), opts.val_fraction, opts.seed)
    copies = opts.copies if opts.kind == "synth" else 1
    for key, fs in groups.items():
        split = "val" if key in val_keys else "train"
        for c in range(n_crops):
            for k in range(copies):
                out.setdefault((split, None), []).append(Row(f"{key}#{c}#{k}", fs, c, k))
    return out


def unmatched(files: list[SourceFile], opts: IngestOptions) -> list[dict[str, str]]:
    """Files the layout leaves out, each with the reason (no partner, outside the folders)."""
    if opts.kind == "aligned":
        folders = _aligned_folders(files)
        return folders[1] if folders else []
    if opts.kind == "unaligned":
        return [{"file": f.key, "reason": "outside trainA/, trainB/, testA/, testB/"} for f in files
                if _top(f) not in ("traina", "trainb", "testa", "testb")]
    return []


def plan_shards(files: list[SourceFile], opts: IngestOptions) -> list[ShardPlan]:
    shards = []
    for (split, domain), rows in sorted(plan_rows(files, opts).items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        for i in range(0, len(rows), opts.shard_rows):
            shards.append(ShardPlan(split, i // opts.shard_rows, rows[i:i + opts.shard_rows], domain))
    return shards


# ---- building one shard (runs in a worker process) --------------------------------------------
# A source image is a PIL RGB image (8-bit sources, as always) or, for a 16-bit source, an
# HxWx3 float32 array in [0, 1] (normalised by its value range), so its 16 bits reach the
# stored PNG instead of being cut to 8 here.
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


def _load(f: SourceFile, settings: Settings, cache: dict) -> tuple[Picture, int | None]:
    """-> (picture, code scale): a 16-bit file as float in [0, 1] with the 2**k - 1 it was divided
    by (see images.Picture.scale), an 8-bit one as a PIL RGB image and None."""
    if f.key not in cache:
        data = f.read(settings)
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is over the {MAX_PIXELS // 1_000_000} MP limit")
        pic = images.read_picture(data, img) if images.is_high_bit(data, img) else None
        if pic is not None and pic.bits == 16:
            cache[f.key] = (pic.pixels, pic.scale)
        else:
            img.load()
            cache[f.key] = (images.to_rgb(img), None)
    return cache[f.key]


def common_scale(a: Picture, scale_a: int | None, b: Picture, scale_b: int | None) -> tuple[Picture, Picture]:
    """Two 16-bit sides of an aligned pair, each normalised by its own 2**k - 1, put on the
    larger of the two scales: the same stored code value then means the same level on both
    sides (A peaking at 3000 (/4095) and B at 5000 (/8191) would otherwise disagree by 2x).
    Float HxWx3 arrays in [0, 1] in and out; anything else is returned unchanged."""
    if scale_a is None or scale_b is None or scale_a == scale_b:
        return a, b
    common = max(scale_a, scale_b)
    return (a * np.float32(scale_a / common)).astype(np.float32), (b * np.float32(scale_b / common)).astype(np.float32)


def _row_images(row: Row, opts: IngestOptions, settings: Settings, cache: dict) -> list[Image.Image]:
    seed = stable_seed(opts.seed, row.key)
    if len(row.files) == 2:  # aligned A/ B/ folders
        (a, scale_a), (b, scale_b) = (_load(f, settings, cache) for f in row.files)
        a, b = common_scale(a, scale_a, b, scale_b)
        if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):  # one 16-bit file: both go float
            a, b = (images.to_array(x) if isinstance(x, Image.Image) else x for x in (a, b))
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
    pair = [_crop(im, box) if box else im for im in pair]
    if opts.kind == "synth":
        if isinstance(pair[0], np.ndarray):
            pair = [degrade.apply(opts.degrade, pair[0], seed), pair[0]]
        else:
            clean = images.to_array(pair[0])
            pair = [images.from_array(degrade.apply(opts.degrade, clean, seed)), pair[0]]
    return pair


def _png(img: Picture) -> bytes:
    """8-bit RGB PNG for 8-bit sources; 16-bit RGB PNG (full 0-65535 range) for 16-bit ones."""
    if isinstance(img, Image.Image):
        return images.encode(img, "PNG", compress_level=6)
    arr = np.ascontiguousarray(img, dtype=np.float32)
    return images.write_picture(arr, images.Picture(arr, bits=16, scale=65535), "png")[0]


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


# ---- the whole ingest ---------------------------------------------------------------------------
def _fingerprint(files: list[SourceFile], opts: IngestOptions) -> str:
    data = json.dumps({"opts": asdict(opts), "files": [f.key for f in files]}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _version(storage: Storage, name: str, fingerprint: str) -> str:
    """The shard-name version of this ingest: the same for a re-run of the same ingest over the
    same existing dataset (so a killed run resumes), different from every shard name the
    existing dataset uses (so building the new one never overwrites the old one's shards)."""
    key = manifest_key(name)
    previous = hashlib.sha256(storage.get_bytes(key)).hexdigest() if storage.exists(key) else ""
    return hashlib.sha256(f"{fingerprint}|{previous}".encode()).hexdigest()[:12]


def _resumable(storage: Storage, opts: IngestOptions, fingerprint: str, plans: list[ShardPlan]) -> dict[str, tuple]:
    """Shards a previous, interrupted run of the same ingest finished and that still verify.
    Markers of other ingests are left alone here (the sweep after the manifest removes them)."""
    prefix = dataset_prefix(opts.name)
    wanted = {p.path for p in plans}
    done = {}
    for obj in storage.list(prefix + "_ingest/"):
        marker = json.loads(storage.get_bytes(obj.key))
        shard = Shard(**marker["shard"])
        if (marker["fingerprint"] == fingerprint and shard.path in wanted
                and not (shard.rows and shard.min_side is None)  # a marker from before min_side: rebuild
                and verify_shard(storage, opts.name, shard) is None):
            done[shard.path] = (shard, marker["skipped"])
    return done


def _sweep(storage: Storage, manifest: Manifest) -> int:
    """Delete every object under the dataset's prefix that `manifest` (just written) does not
    reference: the replaced dataset's shards, progress markers, shards of killed runs. -> count."""
    prefix = dataset_prefix(manifest.name)
    keep = {manifest_key(manifest.name)} | {prefix + s.path for shards in manifest.splits.values() for s in shards}
    return storage.delete_keys([o.key for o in storage.list(prefix) if o.key not in keep], prefix)


@dataclass
class IngestPlan:
    """A validated ingest, ready to run: nothing has been written yet."""
    src: str | None
    opts: IngestOptions
    files: list[SourceFile]
    plans: list[ShardPlan]
    skipped: list[dict[str, str]]  # left out while listing / matching, each with its reason
    overwrite: bool = False
    replaces: bool = False  # a dataset of that name exists (kept until the new manifest is written)

    @property
    def total_rows(self) -> int:
        return sum(len(p.rows) for p in self.plans)


def prepare(src: str | None, opts: IngestOptions, settings: Settings, overwrite: bool = False) -> IngestPlan:
    """Check everything a user can get wrong (options, store, name, source, layout) and plan the
    shards, writing nothing: a CLI shows progress only after this passed."""
    opts.validate()
    storage = Storage(settings)
    storage.check()
    replaces = storage.exists(manifest_key(opts.name))
    if replaces and not overwrite:
        raise Img2ImgError(f"dataset {opts.name!r} already exists; pass --overwrite to replace it")
    if src is None:
        files, skipped = list_sample(), []
    else:
        files, skipped = scan_source(src, settings)
    plans = plan_shards(files, opts)
    return IngestPlan(src, opts, files, plans, skipped + unmatched(files, opts), overwrite, replaces)


def run(plan: IngestPlan, settings: Settings, workers: int = 2,
        progress: Callable[[int, int], None] = lambda done, total: None) -> IngestResult:
    """Build the planned shards in `workers` processes (resuming an interrupted run of the
    same ingest), write the manifest, then delete what the manifest does not reference (with
    --overwrite: the old dataset). Until the manifest is written, an existing dataset of the
    same name stays complete and readable, whatever fails or is interrupted.
    Raises Img2ImgError when no source image could be used (nothing is then left behind)."""
    src, opts, files, plans = plan.src, plan.opts, plan.files, plan.plans
    storage = Storage(settings)
    fingerprint = _fingerprint(files, opts)
    version = _version(storage, opts.name, fingerprint)
    for p in plans:
        p.version = version
    done = _resumable(storage, opts, fingerprint, plans)
    total = plan.total_rows
    finished = sum(len(p.rows) for p in plans if p.path in done)
    progress(finished, total)
    results = dict(done)
    todo = [p for p in plans if p.path not in done]
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            futures = {pool.submit(build_shard, settings, opts, p, fingerprint): p for p in todo}
            for fut in as_completed(futures):
                results[futures[fut].path] = fut.result()
                finished += len(futures[fut].rows)
                progress(finished, total)
    splits: dict[str, list[Shard]] = {}
    skipped = list(plan.skipped)
    seen = {s["file"] for s in skipped}
    for p in plans:
        shard, skips = results[p.path]
        splits.setdefault(p.split, []).append(shard)
        for s in skips:
            if s["file"] not in seen:
                seen.add(s["file"])
                skipped.append(s)
    manifest = Manifest(
        name=opts.name, kind=PAIRED_KINDS[opts.kind], source_kind=opts.kind,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=opts.source_label or src or "sample:scikit-image", image_size=opts.size,
        degradation=opts.degrade if opts.kind == "synth" else None, seed=opts.seed,
        options={k: v for k, v in asdict(opts).items() if k not in ("name", "source_label")},
        splits=splits, skipped=skipped)
    if not any(manifest.counts.values()):
        prefix = dataset_prefix(opts.name)  # remove this run's (empty) shards and markers, nothing else
        storage.delete_keys([prefix + k for p in plans for k in (p.path, p.marker)], prefix)
        kept = f"; dataset {opts.name!r} was left as it was" if storage.exists(manifest_key(opts.name)) else ""
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""  # the first 5 keep it one line
        raise Img2ImgError(f"no image could be used from {src or 'the sample set'}{kept}; skipped {len(skipped)}: "
                           + "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5]) + more)
    storage.put_bytes(manifest_key(opts.name), manifest.to_json().encode(), "application/json")  # the commit
    _sweep(storage, manifest)
    return IngestResult(manifest, written=len(todo), reused=len(done), skipped=skipped)


def ingest(src: str | None, opts: IngestOptions, settings: Settings, overwrite: bool = False,
           workers: int = 2, progress: Callable[[int, int], None] = lambda done, total: None) -> IngestResult:
    """`prepare` then `run`: images under `src` (a folder, s3://bucket/prefix, or None for the
    sample photos) -> dataset `opts.name` on the object store. Raises Img2ImgError on bad input."""
    return run(prepare(src, opts, settings, overwrite), settings, workers, progress)
