"""Which output each input of a batch gets: locations (`s3://bucket/prefix/` or a local path),
the output key that keeps the input's relative path, and the plan of a listing (inputs that
would write the same output are listed as failed, never written twice). Pure: no service."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import Img2ImgError
from jobs.batch.spec import MANIFEST
from translator.video import VIDEO_SUFFIXES

# Output formats `--format same` keeps (what translator.codec can write); others become PNG.
KEPT = ("png", "jpeg", "jpg", "webp", "tiff", "tif")
VIDEO = "video"  # the format of a video input's output: its container, by the output's suffix


@dataclass(frozen=True)
class Location:
    """`s3://bucket/prefix` (bucket set) or a local path (`path` set). A prefix ending in "/"
    (or empty) is a folder; anything else names one object."""

    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    @property
    def is_s3(self) -> bool:
        return self.path is None

    @property
    def is_folder(self) -> bool:
        return self.prefix == "" or self.prefix.endswith("/")

    @property
    def manifest_key(self) -> str:
        """Where a batch writing here puts its manifest: in the folder, or beside the one object."""
        return (self.prefix if self.is_folder else posixpath.dirname(self.prefix).rstrip("/") + "/").lstrip("/") + MANIFEST

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.is_s3 else str(self.path)


def parse_location(text: str) -> Location:
    """"s3://bucket/a/b/" -> Location("bucket", "a/b/"); anything else -> a local path.
    Raises Img2ImgError for an s3:// URL without a bucket or with an empty segment."""
    if not text.startswith("s3://"):
        return Location(path=Path(text).expanduser())
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not bucket or "//" in prefix or prefix.startswith("/"):
        raise Img2ImgError(f"{text!r} is not s3://BUCKET/PREFIX/ (a bucket and a prefix without empty parts)")
    return Location(bucket, prefix)


def output_name(rel: str, fmt: str) -> tuple[str, str]:
    """An input's relative path and `--format` (png | same) -> (output relative path, the
    format it is written in). png: the suffix becomes .png; same: kept when the codec can write
    it (png, jpeg, webp, tiff), else .png. A video (VIDEO_SUFFIXES) keeps its name, format "video"."""
    stem, ext = posixpath.splitext(rel)
    if ext.lower() in VIDEO_SUFFIXES:
        return rel, VIDEO
    ext = ext[1:].lower()
    if fmt == "same" and ext in KEPT:
        return rel, ext
    return f"{stem if ext else rel}.png", "png"


def output_key(key: str, src: Location, dst: Location, fmt: str) -> tuple[str, str]:
    """Input object `key` (under `src`) -> (output key under `dst`, output format). A folder
    keeps the path relative to `src`'s prefix; a single input goes to `dst`'s prefix by its
    base name, or to `dst`'s key itself when `dst` names one object."""
    rel = key[len(src.prefix):] if src.is_folder else posixpath.basename(key)
    name, out_fmt = output_name(rel, fmt)
    if not dst.is_folder and not src.is_folder:
        return dst.prefix, output_name(dst.prefix, "same")[1] if fmt == "same" and out_fmt != VIDEO else out_fmt
    return dst.prefix + name, out_fmt


@dataclass
class Item:
    """One input of a batch: `key` (size bytes) -> `out_key` in format `fmt`; `reason` says why
    it will not be processed (empty: it will)."""

    key: str
    size: int
    out_key: str
    fmt: str
    reason: str = ""


def check_locations(src: Location, dst: Location) -> None:
    """Refuse an output that would become input on a re-run (inside the input folder, or the
    input itself). Raises Img2ImgError."""
    if not (src.is_s3 and dst.is_s3) or src.bucket != dst.bucket:
        return
    if (src.is_folder and dst.prefix.startswith(src.prefix)) or dst.prefix == src.prefix:
        raise Img2ImgError(f"the output {dst} is inside the input {src}: a re-run would enhance the outputs; "
                           "choose another output prefix")


def plan(objects: list[tuple[str, int]], src: Location, dst: Location, fmt: str) -> list[Item]:
    """A listing [(key, size bytes)] under `src` -> one Item per input, sorted by key. Folder
    markers and a manifest of an earlier batch are not inputs; when several inputs map to one
    output (a.jpg and a.png with --format png) the first by key is processed and the others get
    a reason naming it. A video whose output is not named as a video is refused the same way."""
    items: list[Item] = []
    taken: dict[str, str] = {}
    for key, size in sorted(objects):
        if key.endswith("/") or posixpath.basename(key) == MANIFEST:
            continue
        out_key, out_fmt = output_key(key, src, dst, fmt)
        reason = f"same output {out_key} as {taken[out_key]}" if out_key in taken else ""
        if out_fmt == VIDEO and not out_key.lower().endswith(VIDEO_SUFFIXES):
            reason = f"a video is written as a video: name the output {', '.join(VIDEO_SUFFIXES)}"
        taken.setdefault(out_key, key)
        items.append(Item(key, size, out_key, out_fmt, reason))
    return items
