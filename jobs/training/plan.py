"""The arithmetic of a training request: rows, workers, batch size, steps, epochs.

Ray Train splits every training stream equally over the workers (`streaming_split(equal=True)`
drops the remainder rows), so each worker sees `rows // workers` rows per pass. When that is
less than a batch (or yields only a few batches), the worker's stream REPEATS within the epoch
(each repeat is a fresh random crop/flip of the same rows), so an epoch always has at least
`MIN_STEPS_PER_EPOCH` full batches per worker and the requested batch size is kept (batch size
is a hyper-parameter of the variant; shrinking it silently would change what is trained).

Unpaired datasets follow the CycleGAN reference implementation: an epoch is a pass over the
LARGER domain and the smaller one cycles (`index % len(A)` in junyanz/pytorch-CycleGAN-and-pix2pix
`unaligned_dataset.py`).

Everything here is pure arithmetic (no Ray, no store), so the CLI checks a request before
anything is submitted and the job runs exactly the plan it was given.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from cluster.admission import Footprint, check_fits
from cluster.errors import Img2ImgError

MIN_STEPS_PER_EPOCH = 8
CADENCE_RE = re.compile(r"^(?:(?P<steps>\d+)|(?P<num>\d+(?:\.\d+)?)(?P<unit>s|m|h)|(?P<epoch>epoch)|(?P<auto>auto))$")
# `auto`: validate + checkpoint every DEFAULT_CADENCE_S of training (and at the end). Two
# minutes keeps bookkeeping (a validation pass, an S3 upload, an MLflow round trip, a few
# seconds on CPU) a small share of wall time for tiny and huge datasets alike, and bounds the
# work a worker failure can lose.
DEFAULT_CADENCE_S = 120.0
# The epoch count when the request gives no limit at all (no --epochs, --max-steps or --time-budget).
DEFAULT_EPOCHS = 10
# The step count of a run that only a --time-budget ends: never reached (the budget stops it);
# learning-rate schedules that decay over the run's steps stay at their start value.
UNLIMITED_STEPS = 2**62


@dataclass(frozen=True)
class Cadence:
    """When to validate and checkpoint: every `steps` optimiser steps, every `seconds` of
    training, or at each epoch end (`epoch`). Exactly one is set."""

    steps: int | None = None
    seconds: float | None = None
    epoch: bool = False

    @classmethod
    def parse(cls, text: str | None) -> Cadence:
        """`"200"` (steps), `"30s"`, `"5m"`, `"1h"`, `"epoch"` or `"auto"` (= every 2 minutes).

        Raises Img2ImgError on anything else."""
        m = CADENCE_RE.match((text or "auto").strip().lower())
        if not m:
            raise Img2ImgError(f"--checkpoint-every {text!r} is not a cadence: use steps (200), minutes (5m), "
                               "seconds (30s), hours (1h), 'epoch' or 'auto'")
        if m["steps"]:
            if int(m["steps"]) < 1:
                raise Img2ImgError("--checkpoint-every must be at least 1 step")
            return cls(steps=int(m["steps"]))
        if m["epoch"]:
            return cls(epoch=True)
        if m["auto"]:
            return cls(seconds=DEFAULT_CADENCE_S)
        seconds = float(m["num"]) * {"s": 1, "m": 60, "h": 3600}[m["unit"]]
        if seconds <= 0:
            raise Img2ImgError("--checkpoint-every must be a positive duration")
        return cls(seconds=seconds)


def check_options(*, workers: int = 1, cpus_per_worker: float = 1.0, epochs: int | None = None,
                  max_steps: int | None = None, time_budget_s: float | None = None, precision: str = "auto",
                  checkpoint_every: str | None = "auto", stall_timeout_s: float | None = None) -> None:
    """The training options that need nothing but their own values (no torch, no service), so a
    bad one is refused at once, before the dataset, the registry or the cluster is contacted.
    Raises Img2ImgError naming the option."""
    if workers < 1:
        raise Img2ImgError(f"--workers must be at least 1, got {workers}")
    if not (math.isfinite(cpus_per_worker) and cpus_per_worker > 0):
        raise Img2ImgError(f"--cpus-per-worker must be positive, got {cpus_per_worker:g}")
    if (epochs is not None and epochs < 1) or (max_steps is not None and max_steps < 1):
        raise Img2ImgError("--epochs and --max-steps must be at least 1")
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise Img2ImgError(f"--time-budget must be a positive number of seconds, got {time_budget_s:g}")
    if precision not in ("auto", "fp32", "bf16"):
        raise Img2ImgError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    if stall_timeout_s is not None and not (math.isfinite(stall_timeout_s) and stall_timeout_s >= 0):
        raise Img2ImgError(f"--stall-timeout must be 0 (never) or a positive number of seconds, got {stall_timeout_s:g}")
    Cadence.parse(checkpoint_every)


@dataclass(frozen=True)
class TrainPlan:
    """What one training job will run, per worker.

    rows: training rows per stream (paired: {"train": n}; unpaired: {"train_a": n, "train_b": m}).
    rows_per_worker: the same, after the equal split over the workers.
    steps_per_epoch: optimiser steps per epoch (every worker runs the same number: DDP needs it).
    total_steps: the job stops here at the latest (`--max-steps` or `--epochs`, whichever comes
    first; UNLIMITED_STEPS when only a time budget ends it).
    repeats: how many passes over its rows a worker's largest stream makes per epoch (1 = none).
    val_rows: validation rows (each scored by exactly one worker: `jobs.training.worker.validate`).
    """

    workers: int
    batch_size: int
    rows: dict[str, int]
    rows_per_worker: dict[str, int]
    steps_per_epoch: int
    epochs: int
    total_steps: int
    repeats: dict[str, int]
    val_rows: int
    limits: tuple[str, ...] = ("epochs",)  # the limits that apply, first reached wins: epochs, max-steps, time-budget
    time_budget_s: float | None = None
    ends_by: str = "epochs"  # the step limit that sets total_steps: epochs | max-steps | "" (only the time budget)
    default_epochs: bool = False  # no limit was given: DEFAULT_EPOCHS

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.workers

    @property
    def stop_reason(self) -> str:
        """The step limit that ends the run (`epochs`, `max-steps`), or `time-budget` if none does."""
        return self.ends_by or "time-budget"

    @property
    def bounded(self) -> bool:
        """Whether a step count ends the run (False: only its time budget does)."""
        return self.total_steps < UNLIMITED_STEPS

    def describe(self) -> str:
        """What ends the run, for the submission line, e.g. `400 steps (--max-steps)`, `80 steps
        (10 epochs, before --max-steps)`, `150 s of training (--time-budget); no epoch limit`,
        several joined by `or ... whichever comes first`."""
        parts = []
        if self.ends_by == "max-steps":
            parts.append(f"{self.total_steps} steps (--max-steps"
                         + (", before --epochs ends it)" if "epochs" in self.limits else ")"))
        elif self.ends_by == "epochs":
            what = f"the default {self.epochs} epochs" if self.default_epochs else \
                f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
            parts.append(f"{self.total_steps} steps ({what}" + (", before --max-steps)" if "max-steps" in self.limits
                                                                 else ")"))
        if "time-budget" in self.limits:
            parts.append(f"{self.time_budget_s:g} s of training (--time-budget)")
        text = " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "")
        return text + ("" if "epochs" in self.limits else "; no epoch limit")

    def notes(self) -> list[str]:
        """Human-readable remarks worth printing at submission (e.g. the data repeats)."""
        out = []
        for stream, n in self.rows_per_worker.items():
            if self.repeats.get(stream, 1) > 1:
                out.append(f"{stream}: {self.rows[stream]} rows over {self.workers} worker(s) = {n} per worker; "
                           f"an epoch of {self.steps_per_epoch} steps x batch {self.batch_size} repeats them "
                           f"{self.repeats[stream]}x (fresh random crops each time)")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def limits_for(epochs: int | None, max_steps: int | None, time_budget_s: float | None) -> tuple[str, ...]:
    """Which limits end a run, from what the user gave (None = not given): every limit given
    counts, the first reached ends the run; a default never cuts one the user gave, so the
    default epoch count (DEFAULT_EPOCHS) applies only when no limit at all was given."""
    given = tuple(name for name, v in (("epochs", epochs), ("max-steps", max_steps), ("time-budget", time_budget_s))
                  if v is not None)
    return given or ("epochs",)


def make_plan(rows: dict[str, int], workers: int, batch_size: int, epochs: int | None, max_steps: int | None,
              val_rows: int, *, dataset: str = "the dataset", time_budget_s: float | None = None) -> TrainPlan:
    """Plan a job, or refuse it with one line naming the numbers and the fix.

    rows: training rows per stream ({"train": n} or {"train_a": n, "train_b": m}). epochs,
    max_steps, time_budget_s (seconds): the limits the user gave, None when not given
    (`limits_for`: the first reached ends the run; none given = DEFAULT_EPOCHS epochs).
    Raises Img2ImgError when some worker would get no training rows, when there is nothing to
    validate on, or when the numbers themselves are out of range.
    """
    limits, epochs_given = limits_for(epochs, max_steps, time_budget_s), epochs
    if "epochs" in limits and epochs is None:
        epochs = DEFAULT_EPOCHS
    if workers < 1 or batch_size < 1 or (epochs is not None and epochs < 1) or (max_steps is not None and max_steps < 1):
        raise Img2ImgError(f"workers ({workers}), batch size ({batch_size}), epochs ({epochs}) and max steps "
                           f"({max_steps}) must all be at least 1")
    per_worker = {}
    for stream, n in rows.items():
        if n // workers < 1:
            label = "training rows" if stream == "train" else f"training images in domain {stream[-1].upper()}"
            raise Img2ImgError(f"{dataset} has {n} {label} but --workers {workers} needs at least one per worker; "
                               f"use --workers {max(1, n)} or ingest more data")
        per_worker[stream] = n // workers
    if val_rows < 1:
        raise Img2ImgError(f"{dataset} has no validation rows (validation picks the checkpoint to register); "
                           "re-ingest it with --val-fraction above 0 and at least 2 usable images (validation "
                           "holds out whole source images), or with a test/ folder")
    largest = max(per_worker.values())
    # Rows a worker's last partial batch leaves over are carried into the next epoch's first batch.
    steps_per_epoch = max(MIN_STEPS_PER_EPOCH, largest // batch_size)
    total = UNLIMITED_STEPS
    if "epochs" in limits:
        total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    ends_by = "" if total == UNLIMITED_STEPS else "max-steps" if max_steps is not None and total == max_steps \
        else "epochs"
    repeats = {s: math.ceil(steps_per_epoch * batch_size / n) for s, n in per_worker.items()}
    return TrainPlan(workers=workers, batch_size=batch_size, rows=dict(rows), rows_per_worker=per_worker,
                     steps_per_epoch=steps_per_epoch, epochs=math.ceil(total / steps_per_epoch), total_steps=total,
                     repeats=repeats, val_rows=val_rows, limits=limits, time_budget_s=time_budget_s, ends_by=ends_by,
                     default_epochs=not any(v is not None for v in (epochs_given, max_steps, time_budget_s)))


def check_capacity(workers: int, cpus_per_worker: float, use_gpu: bool, resources: dict[str, float], where: str,
                   serve_cpus: float = 0.0, largest_node: float | None = None) -> None:
    """Refuse a cluster job (training or evaluation) that could never start: its whole footprint
    (`cluster.admission.Footprint`: workers, the data pipeline's CPUs, the driver's) does not fit
    in the cluster at `where` (`resources`: its totals, {} skips the check) beside Serve
    replicas holding `serve_cpus`, or on its largest node. Raises Img2ImgError with the fix."""
    check_fits(Footprint(workers, cpus_per_worker, 1.0 if use_gpu else 0.0), resources, where, serve_cpus,
               largest_node)
