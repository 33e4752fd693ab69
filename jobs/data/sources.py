"""Where ingest reads images from: a local folder, an `s3://bucket/prefix`, or the sample
photographs bundled with scikit-image (real photos shipped in a package: no download)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.files import IMAGE_SUFFIXES
from cluster.settings import Settings
from cluster.storage import Storage

# The photographs among scikit-image's bundled data (not the synthetic test patterns).
SAMPLE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                 "motorcycle_right.png", "hubble_deep_field.jpg", "camera.png", "coins.png", "moon.png",
                 "brick.png", "grass.png", "gravel.png", "retina.jpg", "ihc.png"]


@dataclass(frozen=True)
class SourceFile:
    key: str  # path relative to the source root, '/'-separated: names records and matches A/B
    location: str  # local path, or object key when bucket is set
    bucket: str | None = None
    stamp: str = ""  # size, modification time (and ETag): another file at the same key is another ingest

    def read(self, settings: Settings) -> bytes:
        if self.bucket is None:
            return Path(self.location).read_bytes()
        return Storage(settings, bucket=self.bucket).get_bytes(self.location)


def sample_dir() -> Path:
    import skimage.data  # deferred: slow to import, and only the built-in sample needs it

    return Path(skimage.data.__file__).parent


def list_sample() -> list[SourceFile]:
    root = sample_dir()
    return [SourceFile(name, str(root / name), stamp=_stamp(root / name)) for name in SAMPLE_PHOTOS
            if (root / name).exists()]


def _stamp(path: Path) -> str:
    """"SIZE@MTIME_NS" of a local file; "" when it cannot be read (reading it reports why)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}@{st.st_mtime_ns}"


def scan_source(src: str, settings: Settings) -> tuple[list[SourceFile], list[dict[str, str]]]:
    """(image files under `src`, recursive and sorted by key, so plans are deterministic;
    the files left out, each as {"file", "reason"}: not an image by its suffix, or hidden).

    Hidden files and folders (a name starting with a dot: `.ipynb_checkpoints/`, `.DS_Store`,
    macOS `._photo.jpg`) are never data; a hidden folder is listed once and not descended into.

    Raises Img2ImgError if the folder / bucket does not exist or holds no image.
    """
    keys: list[tuple[str, str, str]] = []  # (key relative to src, location, stamp)
    bucket = None
    if src.startswith("s3://"):
        bucket, _, prefix = src[5:].partition("/")
        if not bucket:
            raise Img2ImgError(f"{src!r} names no bucket: use s3://BUCKET/PREFIX")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        storage = Storage(settings, bucket=bucket)
        storage.check()
        keys = [(o.key[len(prefix):], o.key, f"{o.size}@{o.modified.isoformat() if o.modified else ''}@{o.etag}")
                for o in storage.list(prefix)]
    else:
        root = Path(src).expanduser()
        if not root.exists():
            raise Img2ImgError(f"source folder {src} does not exist")
        if not root.is_dir():
            raise Img2ImgError(f"source {src} is a file; give the folder that holds the images")
        hidden_dirs = []
        for dirpath, dirnames, names in os.walk(root):
            for d in sorted(d for d in dirnames if d.startswith(".")):
                hidden_dirs.append((Path(dirpath) / d).relative_to(root).as_posix() + "/")
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # do not descend
            keys += [((Path(dirpath) / n).relative_to(root).as_posix(), str(Path(dirpath) / n),
                      _stamp(Path(dirpath) / n)) for n in names]
        keys += [(d, "", "") for d in hidden_dirs]
    files, skipped, hidden = [], [], set()
    for key, location, stamp in keys:
        parts = key.split("/")
        at = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if at is not None:  # a hidden folder is reported once, not file by file
            folder = at < len(parts) - 1
            name = "/".join(parts[:at + 1]) + ("/" if folder else "")
            if name not in hidden:
                hidden.add(name)
                skipped.append({"file": name, "reason": f"hidden {'folder' if folder else 'file'} "
                                                        "(name starts with a dot)"})
        elif Path(key).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": key, "reason": f"not an image file (suffix {Path(key).suffix or 'none'!r})"})
        else:
            files.append(SourceFile(key, location, bucket, stamp))
    if not files:
        raise Img2ImgError(f"no images found under {src} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
                           "hidden files and folders are skipped)")
    return sorted(files, key=lambda f: f.key), sorted(skipped, key=lambda s: s["file"])
