"""A batch request as plain, JSON-serialisable data: what the client submits and the batch job
(`jobs.batch.driver`) reads. Light to import: the CLI checks options before ray, mlflow or torch
load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from cluster.errors import Img2ImgError
from translator import OVERLAP, TILE

MARK = "[img2img-batch]"  # prefix of the lines the client parses from the job's log
FORMATS = ("png", "same")
MAX_PIXELS = 100_000_000  # larger images are listed as failed (their header is read, no pixel decoded)
MANIFEST = "batch-manifest.json"  # written last in the output prefix; never an input
SOURCE_SHA = "img2img-source-sha256"  # output object metadata: the input's checksum
MADE_BY = "img2img-model"  # ... and NAME/VERSION/RUN of the model that made it
VIDEO_CHUNK_FRAMES = 16  # frames of a video per Ray Data row: the unit of work, retry and resume


@dataclass
class BatchSpec:
    """One batch request. Locations are (bucket, prefix): a prefix ending in "/" is a folder, any
    other a single object. The model runs as `runtime`/`precision` (torch fp32 by default: the
    same bytes on every machine; see docs/batch-jobs.md)."""

    model: str  # registered model name
    version: str
    run_id: str  # the version's MLflow run: with name and version, what an output was made by
    src_bucket: str
    src_prefix: str
    dst_bucket: str
    dst_prefix: str
    fmt: str = "png"  # png | same
    workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    runtime: str = "torch"
    precision: str = "fp32"
    max_pixels: int = MAX_PIXELS
    tile: int = TILE
    overlap: int = OVERLAP
    experiment: str = "img2img-batch"

    @property
    def model_id(self) -> str:
        """What an output records as its maker: NAME/VERSION/RUN (a version number alone may be reused)."""
        return f"{self.model}/{self.version}/{self.run_id}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BatchSpec:
        return cls(**json.loads(text))


def check_options(fmt: str = "png", workers: int = 1, cpus_per_worker: float = 1.0,
                  max_megapixels: float = MAX_PIXELS / 1e6) -> None:
    """The options that need nothing but their values, refused before any service is asked.
    Raises Img2ImgError naming the option."""
    if fmt not in FORMATS:
        raise Img2ImgError(f"--format must be png or same, got {fmt!r}")
    if workers < 1 or not cpus_per_worker > 0:
        raise Img2ImgError("--workers must be at least 1 and --cpus-per-worker positive")
    if not max_megapixels > 0:
        raise Img2ImgError("--max-megapixels must be positive")
