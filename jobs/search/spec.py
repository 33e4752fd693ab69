"""A hyper-parameter search request as plain, JSON-serialisable data: what `img2img tune`
submits and its driver (`jobs.search.driver`) reads."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass

from cluster.errors import Img2ImgError
from jobs.search.space import Dimension, check_pbt_space, check_space, parse_space
from jobs.training.spec import TrainSpec

SCHEDULERS = ("asha", "pbt", "fifo")
METRIC = "val_psnr"  # what the search maximises: the trials' validation PSNR (dB), reported at the cadence
_DURATION = re.compile(r"^\s*(?P<num>\d+(\.\d*)?|\.\d+)\s*(?P<unit>s|m|h)?\s*$", re.I)


@dataclass
class SearchSpec:
    """`base`: the trials' common request (a TrainSpec as a dict: dataset, variant, limits,
    `--set` values, `workers` = --workers-per-trial); `space`: the `--search` texts; `trials`:
    samples drawn from the space (each grid key multiplies them); `scheduler`: asha (stops the
    trials whose val PSNR is in the bottom part at a rung), pbt (Population Based Training:
    `jobs.search.pbt`) or fifo (every trial runs to its end);
    `max_concurrent`: trials running at once (the job reserves that many trials' footprint);
    `run_id`: the search's parent MLflow run; `promote`: send the best version through the gate;
    `resume`: the search id (parent run id) whose Tune experiment to continue;
    `perturbation_interval`: PBT's steps between perturbations (default: a quarter of the
    trials' steps); `time_budget_s`: seconds the whole search may run (Tune's `time_budget_s`:
    then it stops every trial and registers the best so far), None: no limit."""

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
    perturbation_interval: int | None = None
    time_budget_s: float | None = None

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
                             self.reduction_factor, self.perturbation_interval, self.time_budget_s)
        spec = self.train
        spec.validate()
        dims = self.dims()
        check_space(dims, spec)
        if self.scheduler == "pbt":
            population = self.trials * math.prod(len(d.values) for d in dims if d.kind == "grid")
            if population < 2 or population > self.max_concurrent:
                raise Img2ImgError(f"--scheduler pbt evolves a population that trains at once: it needs at least 2 "
                                   f"trials and --max-concurrent at least their number ({population}), "
                                   f"got --max-concurrent {self.max_concurrent}")
            check_pbt_space(dims, spec)

    def trial_spec(self, overrides: dict, run_id: str | None = None) -> TrainSpec:
        """One trial's TrainSpec: the common request with the trial's values as `--set` overrides
        (PBT: keeping every checkpoint, since another trial may be cloned from its latest)."""
        keep = {"keep_checkpoints": None} if self.scheduler == "pbt" else {}
        return dataclasses.replace(self.train, config={**self.base.get("config", {}), **overrides}, run_id=run_id,
                                   **keep)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SearchSpec:
        return cls(**json.loads(text))


def parse_budget(text: str | float | None) -> float | None:
    """`--time-budget` of a whole search: `"90"` or `"90s"` (seconds), `"30m"`, `"1.5h"` ->
    seconds (None for None). Raises Img2ImgError for anything else, or a budget that is not
    positive and finite."""
    if text is None or isinstance(text, (int, float)):
        seconds = text
    else:
        m = _DURATION.match(text)
        if not m:
            raise Img2ImgError(f"--time-budget {text!r} is not a duration: use seconds (90 or 90s), minutes (30m) "
                               "or hours (1h)")
        seconds = float(m["num"]) * {"s": 1, "m": 60, "h": 3600}[(m["unit"] or "s").lower()]
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise Img2ImgError(f"--time-budget must be a positive duration, got {text!r}")
    return seconds


def check_search_options(trials: int, scheduler: str, max_concurrent: int, grace_steps: int | None = None,
                         reduction_factor: int = 2, perturbation_interval: int | None = None,
                         time_budget_s: float | None = None) -> None:
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
    if perturbation_interval is not None and perturbation_interval < 1:
        raise Img2ImgError(f"--perturbation-interval must be at least 1 step, got {perturbation_interval}")
    parse_budget(time_budget_s)
