"""What `img2img data show|verify|rm` do, as library functions over the object store (the CLI
only prints their results)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cluster.errors import Img2ImgError
from cluster.files import write_atomic
from cluster.storage import Storage
from registry.manifest import Manifest, dataset_prefix, manifest_key, read_manifest, verify_shard
from translator import images


def direction_of(m: Manifest) -> str | None:
    """`AtoB` | `BtoA` for an aligned dataset (which side is the input), else None."""
    return m.options.get("direction") if m.source_kind == "aligned" else None


def describe(m: Manifest) -> dict[str, Any]:
    """The manifest as JSON-ready data (`data show --json`): every manifest field, `counts`
    (rows per split), `sha256` (the content's identity) and `direction`."""
    data = json.loads(m.to_json())
    data["direction"] = direction_of(m)
    return data


def write_preview(storage: Storage, m: Manifest, path: Path, n: int = 4) -> Path:
    """A labelled PNG grid at `path` (written whole or not at all) of up to `n` rows: input |
    target for paired sets, A | B (one image of each domain a row) for unpaired ones.
    Raises Img2ImgError when the dataset has no rows. -> path."""
    def first_rows(domain: str | None, column_names: list[str]) -> list[dict]:
        out: list[dict] = []
        for shards in m.splits.values():
            for s in shards:
                if s.rows and (domain is None or s.domain == domain) and len(out) < n:
                    data = storage.get_bytes(dataset_prefix(m.name) + s.path)
                    out += pq.read_table(io.BytesIO(data), columns=column_names).slice(0, n - len(out)).to_pylist()
        return out

    def img(png: bytes):
        return images.to_rgb(images.open_image(png))

    if m.kind == "paired":
        rows = [[img(r["input"]), img(r["target"])] for r in first_rows(None, ["input", "target"])]
        direction = direction_of(m)
        labels = (["input", "target"] if not direction else
                  [f"input ({direction[0]})", f"target ({direction[-1]})"])
    else:
        a = [img(r["image"]) for r in first_rows("a", ["image"])]
        b = [img(r["image"]) for r in first_rows("b", ["image"])]
        rows = [[x, y] for x, y in zip(a, b)]
        labels = ["domain A", "domain B"]
    if not rows:
        raise Img2ImgError(f"dataset {m.name!r} has no rows to preview")
    grid = images.grid(rows, labels=labels)
    return write_atomic(path, lambda tmp: grid.save(tmp, "PNG"))  # never leave a half-written preview


def verify_dataset(storage: Storage, name: str) -> int:
    """Recompute every shard's sha256 and row count against the manifest. -> shards verified.
    Raises Img2ImgError listing each damaged shard (`path: missing | sha256 mismatch | N rows,
    manifest says M`), or when the dataset does not exist."""
    m = read_manifest(storage, name)
    problems = [(s.path, err) for shards in m.splits.values() for s in shards
                if (err := verify_shard(storage, name, s))]
    if problems:
        raise Img2ImgError(f"dataset {name!r} is damaged: " + "; ".join(f"{p}: {e}" for p, e in problems))
    return sum(len(v) for v in m.splits.values())


def delete_dataset(storage: Storage, name: str) -> int:
    """Delete dataset `name`, its manifest FIRST: the manifest's presence means "complete", so a
    reader never sees a half-deleted dataset, and an interrupted delete leaves only orphan shards
    (a re-ingest overwrites them). Raises Img2ImgError when it does not exist. -> objects deleted."""
    read_manifest(storage, name)
    storage.delete(manifest_key(name))
    return storage.delete_prefix(dataset_prefix(name)) + 1
