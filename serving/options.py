"""The options of a deployed enhancer, in one place: their defaults (read by `serve deploy`, the
replica, `enhance --local`; serving/config.yaml and the KubeRay RayService manifest spell the same
keys), their checks, and the digest a replica reports once it has applied a config."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from cluster.errors import Img2ImgError
from translator import OVERLAP, TILE

RUNTIMES = ("auto", "torch", "onnx")
MEMORY_FORMATS = ("channels_last", "contiguous")
PRECISIONS = ("auto", "fp32", "bf16")


# The default pixel limit: every photo phones and cameras write, 64 MP phone sensors (9248 x 6936 =
# 64.1 MP) and 61 MP full-frame cameras (9504 x 6336) included. Tiles bound the model's memory, not
# the whole-image buffers (decoded pixels, tiles, outputs, blend, encode): ~100 bytes a pixel, so
# 72 MP costs ~7 GB per request in flight (benchmarks/large_photos.py; docs/your-own-photos.md).
MAX_PIXELS = 72_000_000


@dataclass(frozen=True)
class ServeOptions:
    """How a replica serves. All but `num_cpus` travel in the deployment's user_config (so they
    change without restarting replicas); `num_cpus` is the replica's Ray reservation.

    tile / overlap: default tile edge and overlap in pixels for large images (a request may
    override them; 16 <= tile <= 4096, 0 <= overlap < tile/2). max_pixels: larger images get 413
    (`--max-megapixels`; the default takes what phones and cameras write, see MAX_PIXELS).
    max_batch_size / batch_wait_timeout_s: tiles of concurrent requests run together, up to this
    many, waiting at most this many seconds to fill a batch (1 = off: measured slower on CPU).
    runtime: auto (torch on GPU; on CPU the fastest of onnx, torch fp32 and torch bf16, timed on
    the model at start per image size: serving.model.load) | torch | onnx. threads: intra-op threads per replica
    (None: floor(num_cpus), at least 1). memory_format, precision: torch only.
    request_timeout_s: seconds of compute, counted from when the request's body has arrived,
    before it is answered 504 (`serve deploy` sizes it from the replica's measured speed).
    upload_timeout_s: seconds the body may take to arrive before the request is answered 408;
    generous, for phones on weak uplinks: 900 s carries a 24 MP camera JPEG (about 12 MB) at
    0.1 Mbit/s, and the largest body the default 72 MP limit admits (577 MB: 16-bit RGBA, 8 bytes a
    pixel, plus 1 MB) at 5.2 Mbit/s."""

    tile: int = TILE
    overlap: int = OVERLAP
    max_pixels: int = MAX_PIXELS
    max_batch_size: int = 1
    batch_wait_timeout_s: float = 0.01
    num_cpus: float = 0.5
    runtime: str = "auto"
    threads: int | None = None
    memory_format: str = "channels_last"
    precision: str = "auto"
    request_timeout_s: float = 600.0
    upload_timeout_s: float = 900.0

    def check(self) -> None:
        """Raise Img2ImgError naming the option (as the CLI spells it) and its allowed values."""
        for option, value, allowed in (("--runtime", self.runtime, RUNTIMES),
                                       ("--memory-format", self.memory_format, MEMORY_FORMATS),
                                       ("--precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise Img2ImgError(f"{option} must be {' or '.join(allowed)}, got {value!r}")
        for option, value in (("--num-cpus", self.num_cpus), ("--batch-wait-ms", self.batch_wait_timeout_s * 1000),
                              ("--request-timeout", self.request_timeout_s),
                              ("--upload-timeout", self.upload_timeout_s)):
            if not math.isfinite(value):  # nan passes every `<= 0` test below
                raise Img2ImgError(f"{option} must be a finite number, got {value}")
        if self.num_cpus <= 0 or (self.threads is not None and self.threads < 1):
            raise Img2ImgError("--num-cpus must be > 0 and --threads >= 1")
        # Checked here too, not only per request: a bad default would fail every request.
        problem = tiling_problem(self.tile, self.overlap)
        if problem:
            raise Img2ImgError(f"--tile/--overlap: {problem}")
        if self.max_pixels < 1:
            raise Img2ImgError("--max-megapixels must be > 0")
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise Img2ImgError("--max-batch-size must be >= 1 and --batch-wait-ms >= 0")
        if self.request_timeout_s <= 0 or self.upload_timeout_s <= 0:
            raise Img2ImgError("--request-timeout and --upload-timeout must be > 0 seconds")

    def user_config(self) -> dict[str, Any]:
        """The options a replica reads from its user_config (everything but `num_cpus`)."""
        out = asdict(self)
        out.pop("num_cpus")
        return out


def over_pixel_limit(width: int, height: int, max_pixels: int, command: str) -> str | None:
    """The refusal of a `width` x `height` image over `max_pixels`, saying how to raise the limit
    with `command` (e.g. "img2img serve deploy --model NAME@champion"), or None when it fits."""
    if width * height <= max_pixels:
        return None
    return (f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the {max_pixels / 1e6:.1f} MP limit; "
            f"raise it with: {command} --max-megapixels {math.ceil(width * height / 1e6)}")


def tiling_problem(tile: int, overlap: int) -> str | None:
    """What is wrong with a tile edge / overlap (pixels), or None: 16 <= tile <= 4096 and
    0 <= overlap < tile/2 (so the overlaps of a tile's two sides never meet)."""
    if not 16 <= tile <= 4096 or not 0 <= overlap < tile // 2:
        return f"tile must be 16-4096 and overlap in [0, tile/2), got tile {tile}, overlap {overlap}"
    return None


DEFAULTS = ServeOptions()


def config_id(user_config: dict[str, Any]) -> str:
    """16-hex digest of a user_config: the replica reports it (GET /model) once it has applied
    that config, and `serve deploy` waits for the digest of what it sent."""
    return hashlib.sha256(json.dumps(user_config, sort_keys=True).encode()).hexdigest()[:16]
