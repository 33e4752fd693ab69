"""Local files written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cluster.errors import Img2ImgError

# Files read as images by their suffix (what Pillow reads): ingest and `enhance` skip and list others.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm"}


def write_atomic(path: Path, data: bytes | str | Callable[[Path], None], mode: int | None = None) -> Path:
    """Write `path` through a hidden sibling `.NAME.part` renamed over it, so a reader (or a crash)
    sees the old file or the whole new one, never half of it.

    data: bytes, text (UTF-8), or a function that writes the temp file it is given (e.g.
    `lambda p: image.save(p, "PNG")`). mode: file permissions (e.g. 0o600 for secrets), set before
    any byte is written. Raises OSError as the write did; the temp file is then removed. -> path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        if callable(data):
            data(tmp)
        else:
            raw = data.encode() if isinstance(data, str) else data
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        if mode is not None:
            os.chmod(tmp, mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def make_output_dir(path: Path) -> None:
    """Create the folder `path` (and its parents) for outputs. Raises Img2ImgError in one line
    when the system refuses (a file in the way, a read-only or virtual file system such as
    /proc, no permission), where `mkdir` would raise a bare OSError."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Img2ImgError(f"cannot create the output folder {path}: {e.strerror or e}") from None

