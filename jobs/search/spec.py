"""A hyper-parameter search request as plain, JSON-serialisable data: what `img2img tune`
submits and its driver (`jobs.search.driver`) reads."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass

from cluster.errors import Img2ImgError
from jobs.search.space import Dimension, check_space, parse_space
from jobs.training.spec import TrainSpec

SCHEDULERS = ("asha", "fifo")
METRIC = "val_psnr"  # what the search maximises: the trials' validation PSNR (dB), reported at the cadence


@dataclass
class SearchSpec:
    """`base`: the trials' common request (a TrainSpec as a dict: dataset, variant, limits,
    `--set` values, `workers` = --workers-per-trial); `space`: the `--search` texts; `trials`:
    samples drawn from the space (each grid key multiplies them); `scheduler`: asha (stops the
    trials whose val PSNR is in the bottom part at a rung) or fifo (every trial runs to its end);
    `max_concurrent`: trials running at once (the job reserves that many trials' footprint);
    `run_id`: the search's parent MLflow run; `promote`: send the best version through the gate;
    `resume`: the search id (parent run id) whose Tune experiment to continue."""

    base: dict
    space: list[str]
    trials: int = 4
    scheduler: str = "asha"
    max_concurrent: int = 1
    grace_steps: int | None = None  # ASHA's first rung (steps); default: a quarter of the trials' steps
    reduction_factor: int = 2
    run_id: str | None = None
    promote: bool = False
    resume: str | None = None

    @property
    def train(self) -> TrainSpec:
        return TrainSpec(**self.base)

    def dims(self) -> list[Dimension]:
        """The parsed `space` (raises Img2ImgError for a malformed one: `parse_space`)."""
        return parse_space(self.space)

    def validate(self) -> None:
        """Raise Img2ImgError (one line) for a search that cannot run: its options, the trials'
        common request (`TrainSpec.validate`) and every dimension against the variant
        (`jobs.search.space.check_space`)."""
        check_search_options(self.trials, self.scheduler, self.max_concurrent, self.grace_steps,
                             self.reduction_factor)
        spec = self.train
        spec.validate()
        check_space(self.dims(), spec)

    def trial_spec(self, overrides: dict, run_id: str | None = None) -> TrainSpec:
        """One trial's TrainSpec: the common request with the trial's values as `--set` overrides."""
        return dataclasses.replace(self.train, config={**self.base.get("config", {}), **overrides}, run_id=run_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SearchSpec:
        return cls(**json.loads(text))


def check_search_options(trials: int, scheduler: str, max_concurrent: int, grace_steps: int | None = None,
                         reduction_factor: int = 2) -> None:
    """The search's own options (no service needed). Raises Img2ImgError naming the option."""
    if trials < 1:
        raise Img2ImgError(f"--trials must be at least 1, got {trials}")
    if scheduler not in SCHEDULERS:
        raise Img2ImgError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if max_concurrent < 1:
        raise Img2ImgError(f"--max-concurrent must be at least 1, got {max_concurrent}")
    if grace_steps is not None and grace_steps < 1:
        raise Img2ImgError(f"--grace-steps must be at least 1, got {grace_steps}")
    if reduction_factor < 2:
        raise Img2ImgError(f"--reduction-factor must be at least 2, got {reduction_factor}")
