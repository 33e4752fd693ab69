"""Where ingest reads images from: a local folder, an `s3://bucket/prefix`, or the sample
photographs bundled with scikit-image (real photos shipped in a package: no download)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm"}
# The photographs among scikit-image's bundled data (not the synthetic test patterns).
SAMPLE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                 "motorcycle_right.png", "hubble_deep_field.jpg", "camera.png", "coins.png", "moon.png",
                 "brick.png", "grass.png", "gravel.png", "retina.jpg", "ihc.png"]


@dataclass(frozen=True)
class SourceFile:
    key: str  # path relative to the source root, '/'-separated: names records and matches A/B
    location: str  # local path, or object key when bucket is set
    bucket: str | None = None

    def read(self, settings: Settings) -> bytes:
        if self.bucket is None:
            return Path(self.location).read_bytes()
        return Storage(settings, bucket=self.bucket).get_bytes(self.location)


def sample_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def list_sample() -> list[SourceFile]:
    root = sample_dir()
    return [SourceFile(name, str(root / name)) for name in SAMPLE_PHOTOS if (root / name).exists()]


def list_source(src: str, settings: Settings) -> list[SourceFile]:
    """Every image file under `src` (recursive), sorted by key so plans are deterministic."""
    if src.startswith("s3://"):
        bucket, _, prefix = src[5:].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = Storage(settings, bucket=bucket).list(prefix)
        files = [SourceFile(o.key[len(prefix):], o.key, bucket) for o in objects
                 if Path(o.key).suffix.lower() in IMAGE_SUFFIXES]
    else:
        root = Path(src).expanduser()
        if not root.is_dir():
            raise Img2ImgError(f"source folder {src} does not exist")
        files = []
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(SourceFile(p.relative_to(root).as_posix(), str(p)))
    if not files:
        raise Img2ImgError(f"no images found under {src}")
    return sorted(files, key=lambda f: f.key)
