"""An evaluation request as plain, JSON-serialisable data: what the client submits and the
evaluation job (`jobs.evaluation.driver`) reads; and the mark of the log lines the client
follows. Light to import: the CLI builds it before ray, mlflow or torch load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

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
