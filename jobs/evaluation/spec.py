"""An evaluation request as plain, JSON-serialisable data: what the client submits and the
evaluation job (`jobs.evaluation.driver`) reads; and the mark of the log lines the client
follows. Light to import: the CLI builds it before ray, mlflow or torch load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from cluster.errors import Img2ImgError
from translator import OVERLAP, TILE

MARK = "[img2img-eval]"  # prefix of the lines the client parses from the job's log


@dataclass
class EvalSpec:
    """One evaluation request (plain data: the client resolves it, the job runs it)."""

    model: str  # registered model name
    version: str
    dataset: str
    split: str = "val"  # val | train | all
    limit: int | None = None
    variant: str = ""
    multiple: int = 1
    scale: int = 1  # the generator's output size / input size (its descriptor's); the dataset's too
    model_uri: str = ""  # models:/NAME/VERSION (paired scoring loads this)
    checkpoint: str | None = None  # bucket/checkpoints/RUN/checkpoint_x (needed for the reverse generator)
    kind: str = "paired"  # the dataset's kind
    dataset_sha256: str = ""
    splits: list[str] | None = None  # resolved from `split`
    workers: int = 1  # Scorer actors
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    tile: int = TILE
    overlap: int = OVERLAP
    experiment: str = "img2img-eval"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EvalSpec:
        return cls(**json.loads(text))


SPLITS = ("val", "train", "all")


def check_options(split: str = "val", limit: int | None = None, workers: int = 1, cpus_per_worker: float = 1.0) -> None:
    """The options that need nothing but their values, refused before any heavy import or
    service (the CLI calls it before it imports the evaluation client). Raises Img2ImgError
    naming the option."""
    if split not in SPLITS:
        raise Img2ImgError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise Img2ImgError("--limit must be at least 1")
    if workers < 1 or not cpus_per_worker > 0:
        raise Img2ImgError("--workers must be at least 1 and --cpus-per-worker positive")
