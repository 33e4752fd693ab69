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


@dataclass(frozen=True)
class TrainPlan:
    """What one training job will run, per worker.

    rows: training rows per stream (paired: {"train": n}; unpaired: {"train_a": n, "train_b": m}).
    rows_per_worker: the same, after the equal split over the workers.
    steps_per_epoch: optimiser steps per epoch (every worker runs the same number: DDP needs it).
    total_steps: the job stops here (`--max-steps` or `--epochs`, whichever comes first).
    repeats: how many passes over its rows a worker's largest stream makes per epoch (1 = none).
    val_rows: validation rows (each scored by exactly one worker: `jobs.train_loop.validate`).
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

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.workers

    @property
    def stop_reason(self) -> str:
        return "max-steps" if self.total_steps < self.epochs * self.steps_per_epoch else "epochs"

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


def make_plan(rows: dict[str, int], workers: int, batch_size: int, epochs: int, max_steps: int | None,
              val_rows: int, *, dataset: str = "the dataset") -> TrainPlan:
    """Plan a job, or refuse it with one line naming the numbers and the fix.

    rows: training rows per stream ({"train": n} or {"train_a": n, "train_b": m}).
    Raises Img2ImgError when some worker would get no training rows, when there is nothing to
    validate on, or when the numbers themselves are out of range.
    """
    if workers < 1 or batch_size < 1 or epochs < 1 or (max_steps is not None and max_steps < 1):
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
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    repeats = {s: math.ceil(steps_per_epoch * batch_size / n) for s, n in per_worker.items()}
    return TrainPlan(workers=workers, batch_size=batch_size, rows=dict(rows), rows_per_worker=per_worker,
                     steps_per_epoch=steps_per_epoch, epochs=math.ceil(total / steps_per_epoch), total_steps=total,
                     repeats=repeats, val_rows=val_rows)


def check_capacity(workers: int, cpus_per_worker: float, use_gpu: bool, resources: dict[str, float], where: str,
                   serve_cpus: float = 0.0, largest_node: float | None = None) -> None:
    """Refuse a cluster job (training or evaluation) that could never start: its whole footprint
    (`cluster.admission.Footprint`: workers, the data pipeline's CPUs, the driver's) does not fit
    in the cluster at `where` (`resources`: its totals, {} skips the check) beside Serve
    replicas holding `serve_cpus`, or on its largest node. Raises Img2ImgError with the fix."""
    check_fits(Footprint(workers, cpus_per_worker, 1.0 if use_gpu else 0.0), resources, where, serve_cpus,
               largest_node)
