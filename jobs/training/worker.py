"""The per-worker training loop run by Ray Train's TorchTrainer.

Every worker: build the variant, wrap its networks for DDP, stream its shard of the data,
train; each epoch validate (metrics all-reduced across workers), and report a checkpoint
(rank 0 writes it). Only rank 0 talks to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from cluster.settings import get_settings
from cluster.storage import Storage, arrow_filesystem
from jobs.data.decode import DecodeBatch
from jobs.training.plan import Cadence, TrainPlan
from jobs.training.preempt import PREEMPT_POLL_S, requested
from jobs.training.spec import TrainSpec
from registry.tracking import RunLogger, record_start
from translator import images, tiling
from translator.allocator import retain_freed_memory
from translator.metrics import PSNR_DEFINITION, SetTally, baseline, to_unit
from translator.precision import training_precision
from translator.variants import build_variant

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker is told by the driver, typed. It crosses to the workers as plain data
    (`to_loop_config()`, Ray Train's train_loop_config) and is rebuilt there (`from_loop_config`).

    variant_config: the variant's Config fields ({name: value}); paired: the variant trains on
    input/target pairs (else two unpaired domains); tracking_uri: MLflow, where rank 0 logs;
    resume_path: `bucket/checkpoints/RUN/checkpoint_...` that --resume continues from;
    val_streams: the validation streams the driver passed (`jobs.training.driver.val_streams`; Ray Train
    V2 raises KeyError when asked for any other)."""

    spec: TrainSpec
    plan: TrainPlan
    cadence: Cadence
    variant_config: dict[str, Any]
    paired: bool
    tracking_uri: str
    resume_path: str | None = None
    val_streams: tuple[str, ...] = ()

    def to_loop_config(self) -> dict[str, Any]:
        return {"spec": dataclasses.asdict(self.spec), "plan": self.plan.to_dict(),
                "cadence": dataclasses.asdict(self.cadence), "variant_config": dict(self.variant_config),
                "paired": self.paired, "tracking_uri": self.tracking_uri, "resume_path": self.resume_path,
                "val_streams": list(self.val_streams)}

    @classmethod
    def from_loop_config(cls, cfg: dict[str, Any]) -> WorkerJob:
        return cls(spec=TrainSpec(**cfg["spec"]), plan=TrainPlan(**cfg["plan"]), cadence=Cadence(**cfg["cadence"]),
                   variant_config=cfg["variant_config"], paired=cfg["paired"], tracking_uri=cfg["tracking_uri"],
                   resume_path=cfg.get("resume_path"), val_streams=tuple(cfg.get("val_streams") or ()))


class EmptyShardError(RuntimeError):
    """A worker's pass over its shard of a training stream produced no rows."""


# Rows asked of Ray Data's iterator at a time (then cut into training batches here): its cost per
# batch it hands over is fixed, and a GAN's batch of 2-4 paid it on every step
# (benchmarks/train_throughput.py's profile).
FETCH_ROWS = 32


def cycle_batches(iterator, columns: list[str], batch_size: int, stream: str, rank: int):
    """Endless full batches from a worker's shard, repeating it (each pass is a new Ray Data
    epoch: a fresh shuffle and fresh random crops) and carrying the rows a pass leaves over into
    the next batch, so a shard smaller than one batch still trains. Raises EmptyShardError if a
    whole pass yields no rows (the job then fails instead of looping).
    -> {column: float32 tensor (batch_size, C, H, W)}"""
    pending: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    have = 0
    fetch = max(batch_size, FETCH_ROWS)
    while True:
        rows_this_pass = 0
        for batch in iterator.iter_batches(batch_size=fetch, batch_format="numpy", drop_last=False,
                                           local_shuffle_buffer_size=fetch * 4):
            n = len(batch[columns[0]])
            rows_this_pass += n
            for c in columns:
                pending[c].append(batch[c])
            have += n
            while have >= batch_size:
                joined = {c: np.concatenate(pending[c]) for c in columns}
                yield {c: torch.from_numpy(np.ascontiguousarray(joined[c][:batch_size])) for c in columns}
                pending = {c: [joined[c][batch_size:]] for c in columns}
                have -= batch_size
        if rows_this_pass == 0:
            raise EmptyShardError(f"worker {rank} got no rows of {stream!r} in a whole pass: the dataset has fewer "
                                  "rows than workers; resubmit with fewer --workers")


def train_batches(paired: bool, batch_size: int, rank: int = 0):
    """Endless training batches for this worker: {"input","target"} or {"a","b"}."""
    if paired:
        return cycle_batches(ray.train.get_dataset_shard("train"), ["input", "target"], batch_size, "train", rank)
    # Unpaired: two independent streams, each reshuffled on every pass -> random A/B pairs; the
    # smaller domain simply cycles more often (CycleGAN's `index % len(A)`).
    a = cycle_batches(ray.train.get_dataset_shard("train_a"), ["image"], batch_size, "train_a", rank)
    b = cycle_batches(ray.train.get_dataset_shard("train_b"), ["image"], batch_size, "train_b", rank)
    return ({"a": x["image"], "b": y["image"]} for x, y in zip(a, b))


def _reduce_device() -> torch.device:
    """NCCL (Ray Train's GPU backend) reduces only CUDA tensors; gloo only CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: dict[str, float], world: int) -> dict[str, float]:
    """Sum of each value over the workers."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_reduce_device())
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def _any_worker(flags: list[bool], world: int, share: float = 0.0) -> tuple[list[bool], float]:
    """Each flag OR-ed over the workers and the largest `share` (one collective), so all take
    the same branch and set the same LR. -> (flags, share)."""
    if world == 1:
        return flags, share
    t = torch.tensor([1.0 if f else 0.0 for f in flags] + [share], dtype=torch.float64, device=_reduce_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    values = t.cpu().tolist()
    return [bool(v) for v in values[:-1]], values[-1]


# Column captions of the MLflow sample grids: unpaired rows come from domain A (then B), each
# translated to the other domain and back (cycle consistency).
SAMPLE_LABELS = {"paired": ["input", "output", "target"],
                 "unpaired": ["input (A or B)", "translated", "translated back"]}


def val_owner(key: str, world: int) -> int:
    """The worker (rank in [0, world)) that scores validation row `key`: a fixed hash of the key,
    so every row is scored by exactly one worker whatever order each reads the rows in."""
    return zlib.crc32(key.encode()) % world


@torch.no_grad()
def validate(variant, paired: bool, world: int, rank: int = 0, max_samples: int = 4,
             streams: tuple[str, ...] = ()):
    """The validation set's PSNR/SSIM (dB / [0, 1]), plus sample rows for a grid.

    Computed as `img2img eval` computes them, so training can record them as the version's
    evaluation on its val split: every row scored exactly once (each worker reads all rows and
    scores those `val_owner` gives it; the sums are all-reduced: Ray Train's own split,
    `streaming_split(equal=True)`, drops the rows that do not divide evenly), whole images
    through the tiled path, in fp32 whatever precision training uses. PSNR is that of the
    pooled MSE over the set (`translator.metrics.SetTally`), SSIM the per-image mean; scored at
    the target's size, so for super-resolution the input's numbers are its bicubic upscale's
    (`translator.metrics.baseline`).
    -> ({"val_psnr", "val_ssim", ("val_input_psnr", "val_input_ssim", "val_gain_db",
    "val_unchanged", "val_improved_share" (when some pair changed): paired), "val_images": rows
    scored}, samples)

    streams: the validation streams the job has (`WorkerJob.val_streams`; default: all of them:
    "val", or "val_a" and "val_b"); unpaired with one domain's only, that domain's cycle."""
    variant.eval()
    forward = lambda x, rev=False: variant.translate(x, reverse=rev, fp32=True)  # noqa: E731
    tally = SetTally()
    samples = []
    cols = ["input", "target"] if paired else ["image"]
    whole_image = DecodeBatch(cols, None, augment=False)
    for stream in streams or (["val"] if paired else ["val_a", "val_b"]):
        shard = ray.train.get_dataset_shard(stream)
        if shard is None:
            continue
        for one in shard.iter_batches(batch_size=1, batch_format="numpy"):
            if val_owner(str(one["key"][0]), world) != rank:
                continue
            one = whole_image(one)  # decoded only here: the other workers' rows are never decoded
            batch = {c: torch.from_numpy(np.ascontiguousarray(one[c])) for c in cols}
            x = batch[cols[0]].to(variant.device)
            if paired:
                y = batch["target"].to(variant.device)
                out = tiling.enhance(forward, x, tile=tiling.TILE, overlap=tiling.OVERLAP, multiple=variant.multiple,
                                     scale=variant.scale)
                tally.add(to_unit(out), to_unit(y), to_unit(baseline(x, y.shape[-2:])))  # SR: bicubic is the input
            else:  # cycle consistency: x -> other domain -> back
                rev = stream == "val_b"
                mid = tiling.enhance(lambda t, r=rev: forward(t, r), x, multiple=variant.multiple)
                out = tiling.enhance(lambda t, r=rev: forward(t, not r), mid, multiple=variant.multiple)
                y = mid
                tally.add(to_unit(out), to_unit(x))
            if len(samples) < max_samples:
                row = [x, out, y] if paired else [x, y, out]  # columns: see SAMPLE_LABELS
                samples.append([images.to_pil(t) for t in row])
    total = SetTally.from_sums(_all_reduce(tally.sums(), world))
    if total.images == 0:
        raise EmptyShardError("validation saw no rows: the val split is empty")
    metrics = {f"val_{k}": v for k, v in total.summary(paired).items() if not math.isnan(v)}
    metrics["val_images"] = total.images
    return metrics, samples


def _write_checkpoint(directory: str, variant, epoch: int, metrics: dict, spec: TrainSpec):
    """state.pt + meta.json in `directory` (a temp dir the caller removes once Ray Train has
    uploaded it to the store)."""
    torch.save({"variant": variant.state_dict(), "epoch": epoch}, Path(directory) / STATE_FILE)
    meta = {"variant": spec.variant, "epoch": epoch, "step": variant.step, "metrics": metrics,
            "config": dataclasses.asdict(variant.config), "dataset": spec.dataset}
    (Path(directory) / "meta.json").write_text(json.dumps(meta, indent=2))
    return ray.train.Checkpoint.from_directory(directory)


def _fail_once(spec: TrainSpec) -> None:
    """Test hook for FailureConfig: rank 0 dies once at `fail_at_step` (marker in the store)."""
    storage = Storage(get_settings())
    marker = f"checkpoints/{spec.run_id}/_failed_once"
    if not storage.exists(marker):
        storage.put_bytes(marker, b"1")
        raise RuntimeError(f"injected failure at step {spec.fail_at_step} (test hook)")


def _report(variant, metrics: dict, spec: TrainSpec, rank: int, epoch: int) -> None:
    """ray.train.report with a checkpoint written by rank 0 into a temp dir that is removed as
    soon as Ray Train has persisted it (report uploads synchronously)."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="img2img-ckpt-") as tmp:
        ray.train.report(metrics, checkpoint=_write_checkpoint(tmp, variant, epoch, metrics, spec))


def _due(cadence: Cadence, step: int, steps_per_epoch: int, since_s: float) -> bool:
    """Whether validation + a checkpoint are due after optimiser step `step`, `since_s` seconds
    after the last ones."""
    if cadence.steps:
        return step % cadence.steps == 0
    if cadence.epoch:
        return step % steps_per_epoch == 0
    return since_s >= cadence.seconds


def train_loop_per_worker(cfg: dict) -> None:
    """One Ray Train worker: train `plan.total_steps` optimiser steps (the same on every worker,
    DDP needs it), validating and checkpointing at the cadence and once at the end; asked to make
    room (`jobs.training.preempt`), all stop at the next step with a checkpoint.

    cfg: `WorkerJob.to_loop_config()`.
    """
    job = WorkerJob.from_loop_config(cfg)
    spec, paired, plan, cadence = job.spec, job.paired, job.plan, job.cadence
    total_steps, steps_per_epoch = plan.total_steps, plan.steps_per_epoch
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    # Freed activations stay in the process instead of being page-faulted back in on every step
    # (translator/allocator.py): up to 12% of a 64 px CPU step (benchmarks/step_gap.py).
    retain_freed_memory()
    torch.manual_seed(spec.seed + rank)
    device = ray.train.torch.get_device()
    amp, channels_last = training_precision(spec.precision, device.type)
    variant = build_variant(spec.variant, job.variant_config, device=device, amp=amp,
                            channels_last=channels_last)
    variant.set_total_steps(total_steps)
    checkpoint = ray.train.get_checkpoint()  # this run's own latest (after a worker failure)
    if checkpoint is None and job.resume_path:  # --resume: another run's latest
        checkpoint = ray.train.Checkpoint(path=job.resume_path, filesystem=arrow_filesystem())
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        variant.load_state_dict(state["variant"])
        log.info("restored checkpoint at step %d", variant.step)
    elif spec.init_path:  # --init-from: a registered model's weights, fresh optimisers and schedule
        init = ray.train.Checkpoint(path=spec.init_path, filesystem=arrow_filesystem())
        with init.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        variant.load_state_dict(state["variant"], with_optimizers=False)
        variant.step = 0
        variant.set_total_steps(total_steps)
        # step 0: the parent's quality on this run's val set
        init_metrics, _ = validate(variant, paired, world, rank, streams=job.val_streams)
        if rank == 0 and spec.run_id:
            RunLogger(job.tracking_uri, spec.run_id).metrics(init_metrics, 0)
        log.info("initialised from %s: %s", spec.init_path, init_metrics)
    if world > 1:
        variant.wrap_networks(ray.train.torch.prepare_model)
    logger = RunLogger(job.tracking_uri, spec.run_id) if rank == 0 and spec.run_id else None
    if logger:
        record_start(logger, variant.step if checkpoint else None)
        logger.client.set_tag(logger.run_id, "precision",
                              f"{amp or 'fp32'}{' channels_last' if channels_last else ''}")
        logger.client.set_tag(logger.run_id, "psnr_def", PSNR_DEFINITION)  # how val_psnr/val_gain_db are computed
    batch_size, samples_per_step = variant.config.batch_size, plan.batch_size * world
    # --time-budget counts training time, from when the workers start (not the job's start-up).
    deadline = time.time() + spec.time_budget_s if spec.time_budget_s else None
    t_train = t_book = 0.0
    # Where the loop's time goes (rank 0's; logged at the end): waiting for the next batch, the
    # training step, logging and preemption polls, the per-step agreement of the workers; and the
    # CPU the step's own thread used (on a 1-thread CPU worker, wall minus CPU is time it waited for
    # a core or the all-reduce; torch's other threads and a GPU's are not in it).
    t_data = t_step = t_log = t_sync = cpu_step = 0.0
    t_first_batch = None  # the dataset stream's start-up, inside t_data
    last_book = last_log = time.time()
    window_t, window_steps = time.time(), 0
    logs: dict = {}
    batches = train_batches(paired, batch_size, rank)
    reported = preempted = False
    last_poll = time.time()
    while variant.step < total_steps:
        if spec.fail_at_step and rank == 0 and variant.step == spec.fail_at_step:
            _fail_once(spec)
        t0 = time.time()
        batch = next(batches)
        t1, c1 = time.time(), time.thread_time()
        t_first_batch = t1 - t0 if t_first_batch is None else t_first_batch
        logs = variant.training_step(batch)
        t2 = time.time()
        t_data, t_step, t_train = t_data + t1 - t0, t_step + t2 - t1, t_train + t2 - t0
        cpu_step += time.thread_time() - c1
        window_steps += 1
        step = variant.step
        now = time.time()
        rate = window_steps * samples_per_step / max(now - window_t, 1e-9)
        if logger and (step % spec.log_every == 0 or now - last_log > 5 or step == total_steps):
            logger.metrics({**{f"train_{k}": v for k, v in logs.items()}, "step": step, "epoch": step / steps_per_epoch,
                            "samples": step * samples_per_step, "samples_per_s": rate}, step)
            last_log = now
        asked = False
        if logger and now - last_poll >= PREEMPT_POLL_S:  # a higher-priority job asks for our CPUs
            asked, last_poll = requested(logger.client, logger.run_id) is not None, now
        t3 = time.time()
        # the share of --time-budget used: the LR schedule ends with the budget, not the step total
        used = 1.0 - (deadline - now) / spec.time_budget_s if deadline is not None else 0.0
        (due, out_of_time, preempted), used = _any_worker(
            [_due(cadence, step, steps_per_epoch, now - last_book), deadline is not None and now > deadline, asked],
            world, used)
        if deadline is not None:
            variant.set_budget_used(used)
        t_log, t_sync = t_log + t3 - t2, t_sync + time.time() - t3
        last = step >= total_steps or out_of_time or preempted
        if not (due or last):
            continue
        t0 = time.time()
        metrics, samples = validate(variant, paired, world, rank, streams=job.val_streams)
        metrics.update({f"train_{k}": v for k, v in logs.items()})
        metrics.update(epoch=step // steps_per_epoch, step=step, samples=step * samples_per_step, lr=variant.lr,
                       samples_per_s=rate)
        if logger:
            logger.metrics({**metrics, "epoch": step / steps_per_epoch}, step)
            if samples:
                labels = SAMPLE_LABELS["paired" if paired else "unpaired"]
                logger.image(images.grid(samples, labels=labels), f"samples/step_{step:06d}.png")
        # preempted: the driver re-queues the job instead of registering (jobs.training.preempt)
        _report(variant, {**metrics, **({"preempted": 1.0} if preempted else {})}, spec, rank, step // steps_per_epoch)
        t_book += time.time() - t0
        last_book, window_t, window_steps = time.time(), time.time(), 0
        reported = True
        if last:
            break
    if not reported:  # restored at or past the last step: still hand Ray Train a checkpoint
        metrics, _ = validate(variant, paired, world, rank, streams=job.val_streams)
        metrics.update(epoch=variant.step // steps_per_epoch, step=variant.step, samples=0, lr=variant.lr)
        _report(variant, metrics, spec, rank, variant.step // steps_per_epoch)
    if logger:
        logger.metrics({"time_train_s": t_train, "time_bookkeeping_s": t_book, "time_data_s": t_data,
                        "time_first_batch_s": t_first_batch or 0.0, "time_step_s": t_step, "time_log_s": t_log,
                        "time_sync_s": t_sync, "time_step_cpu_s": cpu_step}, variant.step)
