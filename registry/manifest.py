"""The dataset manifest: what a dataset on the object store holds, and how to check it.

    datasets/<name>/manifest.json             written last: its presence means "complete"
    datasets/<name>/<split>/shard-00000.<version>.parquet   paired:   key, input, target (PNG bytes)
    datasets/<name>/<split>/a-00000.<version>.parquet       unpaired: key, domain, image (one domain a shard)

Readers find shards ONLY through the manifest (never by listing): objects it does not list
(a replaced dataset's shards, a killed ingest's) are not part of the dataset. <version> keeps
an --overwrite's new shards apart from the ones the current manifest lists (jobs/data/ingest.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

from cluster.errors import Img2ImgError, did_you_mean
from cluster.storage import Storage

SCHEMA_VERSION = 1
PAIRED_KINDS = {"synth": "paired", "aligned": "paired", "unaligned": "unpaired"}


def dataset_prefix(name: str) -> str:
    return f"datasets/{name}/"


def manifest_key(name: str) -> str:
    return f"datasets/{name}/manifest.json"


def unversioned(path: str) -> str:
    """`train/shard-00000.<12 hex>.parquet` -> `train/shard-00000.parquet` (older names as they are)."""
    return re.sub(r"\.[0-9a-f]{12}\.parquet$", ".parquet", path)


@dataclass
class Shard:
    path: str  # relative to the dataset prefix
    rows: int
    sha256: str
    bytes: int
    domain: str | None = None  # unpaired shards hold one domain each
    min_side: int | None = None  # px, the shortest side of any image in the shard (None: not recorded)
    upscaled: list[str] = field(default_factory=list)  # source images smaller than --size, upscaled to it
    identical: int = 0  # paired rows whose input equals their target (flat crops the degradation left alone)


@dataclass
class Manifest:
    name: str
    kind: str  # paired | unpaired
    source_kind: str  # synth | aligned | unaligned
    created: str
    source: str
    image_size: int | None
    degradation: str | None
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[Shard]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    scale: int = 1  # target size / input size: 1, or N for N-times super-resolution pairs

    @property
    def counts(self) -> dict[str, int]:
        return {split: sum(s.rows for s in shards) for split, shards in self.splits.items()}

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for shards in self.splits.values() for s in shards)

    @property
    def sha256(self) -> str:
        """Identity of the dataset's content (logged with every training run): the same rows in
        the same shards give the same identity, whatever version their shard names carry."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for s in self.splits[split]:
                digest.update(f"{split}/{unversioned(s.path)}:{s.sha256}".encode())
        return digest.hexdigest()

    def min_side(self, split: str = "train") -> int | None:
        """The shortest side in px of any image of `split` (what a random training crop must fit
        in, for datasets that kept their images' sizes); None when a shard did not record it
        (datasets ingested before it was recorded) or the split is missing or empty."""
        sides = [s.min_side for s in self.splits.get(split, []) if s.rows]
        return min(sides) if sides and None not in sides else None

    def notes(self) -> list[str]:
        """What a user should know about the rows that were kept: source images smaller than the
        crop (upscaled to it, so they hold no real detail at that size) and pairs whose input equals
        the target (flat crops: sky, solid backgrounds; a model can gain nothing on them)."""
        shards = [s for split in self.splits.values() for s in split]
        small = sorted({k for s in shards for k in s.upscaled})
        identical = sum(s.identical for s in shards)
        rows = sum(s.rows for s in shards)
        out = []
        if small:
            listed = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            out.append(f"{len(small)} source image(s) were smaller than the {self.image_size} px crop and were "
                       f"upscaled to it (kept; they add no real detail at that size): {listed}")
        if identical:
            out.append(f"{identical} of {rows} pairs are flat: the input equals the target (the degradation "
                       "changed nothing, e.g. sky or a solid background); kept, they count as identical pairs")
        return out

    def shards(self, split: str, domain: str | None = None) -> list[Shard]:
        if split not in self.splits:
            raise Img2ImgError(f"dataset {self.name!r} has no {split!r} split (it has: {', '.join(self.splits)})")
        return [s for s in self.splits[split] if domain is None or s.domain == domain]

    def to_json(self) -> str:
        data = asdict(self)
        data["counts"] = self.counts
        data["sha256"] = self.sha256
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise Img2ImgError(f"manifest schema {data.get('schema_version')} is not supported (want {SCHEMA_VERSION})")
        data.pop("counts", None)
        data.pop("sha256", None)
        data["splits"] = {k: [Shard(**s) for s in v] for k, v in data["splits"].items()}
        return cls(**data)


def read_manifest(storage: Storage, name: str) -> Manifest:
    if not storage.exists(manifest_key(name)):
        known = [o.key.split("/")[1] for o in storage.list("datasets/", recursive=False) if o.key.count("/") == 2]
        raise Img2ImgError(f"dataset {name!r} not found in s3://{storage.bucket} at {storage.endpoint}"
                           f"{did_you_mean(name, known)}; list them with: img2img data ls")
    return Manifest.from_json(storage.get_bytes(manifest_key(name)).decode())


def check_dataset(storage: Storage, name: str, variant: str) -> Manifest:
    """The manifest of dataset `name`, checked to suit `variant` (paired variants train on paired
    datasets, unpaired on unpaired) and to have training rows. Raises Img2ImgError naming the
    variants that would suit it, or when the dataset is missing or has no training rows."""
    # deferred: translator.variants imports torch, and `data ls|show` read manifests at CLI speed
    from translator.variants import VARIANTS, get_variant

    manifest = read_manifest(storage, name)
    paired = get_variant(variant).paired
    if paired != (manifest.kind == "paired"):
        want = "a paired dataset (input/target)" if paired else "an unpaired dataset (two domains, --kind unaligned)"
        other = " or ".join(n for n, v in VARIANTS.items() if v.paired == (manifest.kind == "paired"))
        raise Img2ImgError(f"variant {variant!r} trains on {want}, but {name!r} is {manifest.kind}; "
                           f"use {other} with it, or another dataset")
    if "train" not in manifest.splits or not manifest.counts.get("train"):
        raise Img2ImgError(f"dataset {name!r} has no training rows")
    return manifest


def stream_rows(manifest: Manifest, split: str) -> dict[str, int]:
    """Rows per stream of a split: {"train": n} (paired) or {"train_a": n, "train_b": m}
    (unpaired: one stream a domain); 0 for a split the dataset lacks."""
    if manifest.kind == "paired":
        return {split: manifest.counts.get(split, 0)}
    return {f"{split}_{d}": sum(s.rows for s in manifest.shards(split, d)) if split in manifest.splits else 0
            for d in "ab"}


def list_manifests(storage: Storage) -> list[Manifest]:
    out = []
    for obj in storage.list("datasets/", recursive=True):
        if obj.key.endswith("/manifest.json") and obj.key.count("/") == 2:
            out.append(Manifest.from_json(storage.get_bytes(obj.key).decode()))
    return sorted(out, key=lambda m: m.name)


def verify_shard(storage: Storage, name: str, shard: Shard) -> str | None:
    """None if the shard's bytes, sha256 and row count match the manifest, else the problem."""
    key = dataset_prefix(name) + shard.path
    if not storage.exists(key):
        return "missing"
    data = storage.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        return "sha256 mismatch"
    rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    if rows != shard.rows:
        return f"{rows} rows, manifest says {shard.rows}"
    return None
