"""The Ray job driver: `python -m jobs.training.driver --spec JSON` (what `img2img train` submits).

Three steps: `plan_job` checks the request against the dataset and the cluster (the same
function refuses it at submission), `build_trainer` makes the TorchTrainer, `register` logs the
best checkpoint's generator to MLflow and registers it as a new version of the model, tagged
with variant, dataset, run id and validation metrics.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.admission import check_deadline
from cluster.errors import Img2ImgError
from cluster.services import driver_args
from cluster.settings import Settings, get_settings
from cluster.storage import Storage, arrow_errors, arrow_filesystem, arrow_unavailable
from jobs.data.stream import cache_budget, load_dataset, synthesis
from jobs.training.crops import check_crop, scale_problem
from jobs.training.held import TagHeldCheckpoint
from jobs.training.plan import Cadence, TrainPlan, check_capacity, make_plan
from jobs.training.preempt import requeue_self
from jobs.training.resume import check_resume, read_resume
from jobs.training.spec import TrainSpec
from jobs.training.stopping import STARTED, JobStopped, check_not_cancelled, mark_ended, on_stop
from jobs.training.watch import Watch
from jobs.training.worker import STATE_FILE, WorkerJob, train_loop_per_worker
from registry.manifest import Manifest, check_dataset, stream_rows
from registry.tracking import TAG_PHASE, TAG_WARNINGS, finish_registration, log_generator
from translator.descriptor import DESCRIPTOR_TAG
from translator.metrics import PSNR_DEFINITION
from translator.tasks import task_for_spec
from translator.variants import get_variant

log = logging.getLogger("img2img.train")
METRIC = "val_psnr"
START_RETRIES = 2  # Ray Train's tries at starting the worker group after the first (controller_failure_limit)


@dataclass
class JobPlan:
    """What the planning step settled before anything trains: the dataset's manifest, the step
    arithmetic, the validate/checkpoint cadence, and the checkpoint `--resume` continues from."""

    manifest: Manifest
    plan: TrainPlan
    cadence: Cadence
    resume_from: str | None


def plan_for(spec: TrainSpec, manifest: Manifest) -> TrainPlan:
    """The job's arithmetic (refused here, before submission, when impossible)."""
    val = [n for n in stream_rows(manifest, "val").values() if n > 0]
    return make_plan(stream_rows(manifest, "train"), spec.workers, spec.variant_config().batch_size, spec.epochs,
                     spec.max_steps, min(val) if val else 0, dataset=f"dataset {spec.dataset!r}",
                     time_budget_s=spec.time_budget_s)


def check_fit(spec: TrainSpec, manifest: Manifest) -> TrainPlan:
    """The request against the dataset (`manifest`): its training crops against the networks and
    the stored images (a super-resolution dataset's scale against the variant's first), then the
    rows/workers/batch arithmetic. -> the plan; raises Img2ImgError."""
    problem = scale_problem(spec, manifest.scale, f"dataset {spec.dataset!r}")
    if problem:
        raise Img2ImgError(problem)
    cfg = spec.variant_config()
    made = synthesis(cfg.degrade, manifest)  # a spec the dataset cannot take is refused now
    for key, what in (("dead_leaves", "puts dead-leaves images among the targets"),
                      ("color_jitter", "jitters the targets' colours"),
                      ("multiscale", "downscales the targets")):
        if not getattr(cfg, key) or made:
            continue
        if manifest.kind != "paired":
            raise Img2ImgError(f"--set {key}={getattr(cfg, key):g} {what} of a paired dataset, from which its "
                               f"inputs are synthesised while training; dataset {spec.dataset!r} is unpaired: drop it")
        raise Img2ImgError(f"--set {key}={getattr(cfg, key):g} {what}, from which the inputs are synthesised while "
                           f"training, and this run reads dataset {spec.dataset!r}'s stored inputs; add "
                           "--set degrade=SPEC (e.g. degrade=random_gaussian:0.5-3)")
    if manifest.image_size:  # the HR side for super-resolution pairs: training crops are of the input
        check_crop(spec, manifest.image_size // manifest.scale, f"dataset {spec.dataset!r}")
    else:  # sizes kept at ingest: every random crop must fit in the smallest training image
        check_crop(spec, manifest.min_side("train"), f"dataset {spec.dataset!r}", square=False)
    return plan_for(spec, manifest)


def plan_job(spec: TrainSpec, settings: Settings, resources: dict[str, float] | None = None,
             where: str = "") -> JobPlan:
    """The planning step, the same at submission (`jobs.training.client.preflight`) and in the driver:
    the --resume target (whose variant and config fill what the request leaves unset), the
    options, the dataset against the variant, the training crops against the networks and the
    stored images, the rows/workers/batch arithmetic, the cluster's `resources` (the one CPU/GPU
    capacity check; None skips it). Raises Img2ImgError with the fix when the request can never run."""
    resume = read_resume(spec, settings) if spec.resume else None
    spec.validate()
    manifest = check_dataset(Storage(settings), spec.dataset, spec.variant)
    plan = check_fit(spec, manifest)
    if resources is not None:
        check_resources(spec, resources, where or settings.ray_address)
    return JobPlan(manifest, plan, Cadence.parse(spec.checkpoint_every), check_resume(spec, plan, resume))


def check_resources(spec: TrainSpec, resources: dict[str, float], where: str, serve_cpus: float = 0.0) -> None:
    """`jobs.training.plan.check_capacity` for a training request (raises Img2ImgError with the fix)."""
    check_capacity(spec.workers, spec.cpus_per_worker, spec.use_gpu, resources, where, serve_cpus)


def val_streams(manifest: Manifest) -> list[str]:
    """The validation streams a job has: "val" (paired), "val_a"/"val_b" (unpaired), each only
    when it has rows. An unpaired set may lack one domain's (a 1-image trainB/, no testB/): the
    workers validate the cycle of the other domain only, since Ray Train V2 raises KeyError
    for a stream it was not given."""
    return [stream for stream, n in stream_rows(manifest, "val").items() if n > 0]


# Rows a worker's pass over a training stream should hold at least. Each pass is a new Ray Data
# execution whose start-up the workers wait for; a split of a few hundred rows made a pass every
# 1-2 s at 64 px and that wait 15-30% of a CPU job's step (benchmarks/train_throughput.py).
PASS_ROWS_PER_WORKER = 1024
# Each read of a shard is a Ray Data read task (an object store GET): a pass makes at most this many.
MAX_SHARD_READS = 64


def reads_per_pass(rows: int, workers: int, shards: int = 1, job_rows: int | None = None) -> int:
    """How many times a pass over a training stream of `rows` rows in `shards` shard files reads
    each row (each time a new random crop) so that every one of `workers` workers gets
    PASS_ROWS_PER_WORKER rows or more, within MAX_SHARD_READS shard reads a pass, and never more
    than the `job_rows` rows the whole job consumes (steps x batch x workers; None: unbounded,
    a time budget ends it); 1 for a split that large already."""
    needed = -(-PASS_ROWS_PER_WORKER * workers // max(rows, 1))
    if job_rows is not None:  # a short job: reading more than it trains on only delays its first step
        needed = min(needed, -(-job_rows // max(rows, 1)))
    return max(1, min(needed, MAX_SHARD_READS // max(shards, 1)))


def datasets_for(spec: TrainSpec, manifest: Manifest, settings: Settings, image_size: int,
                 rotate: bool = False, job_rows: int | None = None) -> dict:
    """The job's Ray Data streams: train (random crops of `image_size`, flips, and 90-degree
    turns with `rotate`; inputs synthesised afresh when the variant's `degrade` says so) per
    domain, and the `val_streams` (whole stored images, PNG bytes).
    job_rows: the rows one stream's whole job consumes (`reads_per_pass`)."""
    # No Ray Data progress bars: in a job's log they are blank lines and redraws for every pass
    # (the job reports its own progress). Speed is the same either way (A/B, 2 rounds).
    ray.data.DataContext.get_current().enable_progress_bars = False
    load = lambda split, **kw: load_dataset(spec.dataset, split, settings, **kw)  # noqa: E731
    rows = stream_rows(manifest, "train")
    reads = lambda stream, domain=None: reads_per_pass(  # noqa: E731
        rows[stream], spec.workers, len(manifest.shards("train", domain)), job_rows)
    cache = cache_budget(settings.decode_cache_share)  # decoded once when a split fits (load_dataset)
    if manifest.kind == "paired":
        cfg = spec.variant_config()
        made = synthesis(cfg.degrade, manifest)
        out = {"train": load("train", image_size=image_size, rotate=rotate, repeat=reads("train"),
                             degrade=made, cache_bytes=cache, dead_leaves=cfg.dead_leaves,
                             color_jitter=cfg.color_jitter, multiscale=cfg.multiscale, shuffle=True)}
    else:  # the two domains' streams share the budget
        out = {f"train_{d}": load("train", image_size=image_size, domain=d, rotate=rotate,
                                  repeat=reads(f"train_{d}", d), cache_bytes=cache // 2, shuffle=True)
               for d in "ab"}
    for stream in val_streams(manifest):
        # undecoded: every worker reads every val row and decodes only the ones it scores (train_loop.validate)
        out[stream] = load("val", decode=False, **({"domain": stream[-1]} if stream != "val" else {}))
    return out


def build_trainer(spec: TrainSpec, settings: Settings, job: JobPlan, callbacks: list | None = None):
    """Trainer construction: a TorchTrainer running `train_loop_per_worker` on `spec.workers`
    workers over the dataset's streams, keeping the `keep_checkpoints` best by val PSNR in the
    store under checkpoints/<run id>/. `callbacks`: Ray Train user callbacks (a search trial
    passes Tune's `TuneReportCallback`, which hands every report to Tune's scheduler); a run with
    an MLflow run id also gets `TagHeldCheckpoint` (the step a restart resumes from, on the run)."""
    cfg = spec.variant_config()
    plan = job.plan
    job_rows = plan.total_steps * plan.samples_per_step if plan.bounded else None
    datasets = datasets_for(spec, job.manifest, settings, cfg.image_size, cfg.augment == "d4", job_rows)
    # Only the training streams are split: Ray Train's split drops the rows that do not divide
    # evenly, and validation must score every row (each worker picks its own: train_loop.validate).
    split = [k for k in datasets if k.startswith("train")]
    worker_job = WorkerJob(spec=spec, plan=job.plan, cadence=job.cadence, variant_config=dict(cfg.__dict__),
                           paired=get_variant(spec.variant).paired, tracking_uri=settings.mlflow_uri,
                           resume_path=job.resume_from, val_streams=tuple(val_streams(job.manifest)))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_job.to_loop_config(),
        # SPREAD: one worker per node where it can (DDP across machines); PACK (Ray's default) fills a node first
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"CPU": spec.cpus_per_worker, **spec.worker_resources},
                                     placement_strategy="SPREAD" if spec.spread else "PACK"),
        run_config=RunConfig(
            name=spec.run_id, storage_path=f"{settings.bucket}/checkpoints",
            storage_filesystem=arrow_filesystem(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints, checkpoint_score_attribute=METRIC,
                                               checkpoint_score_order="max"),
            # controller_failure_limit bounds how often Ray retries STARTING the worker group
            # (unbounded by default: an unplaceable job would stay RUNNING forever).
            failure_config=FailureConfig(max_failures=spec.max_failures, controller_failure_limit=START_RETRIES),
            # after Tune's: a trial's scheduler hears of a report before MLflow does
            callbacks=[*(callbacks or []), *([TagHeldCheckpoint(settings.mlflow_uri, spec.run_id)] if spec.run_id else [])]),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split),
    )


def register(spec: TrainSpec, settings: Settings, job: JobPlan, result, fit_s: float, started: float):
    """Registration: log the best checkpoint's generator to the run and register it as a new
    version of `spec.registered_name`, tagged with variant, dataset, run id and validation
    metrics (unpaired: `val_cycle_*`); then log what ran (steps, epochs, samples, times).
    -> (version or None, the best checkpoint's metrics)."""
    cfg = spec.variant_config()
    paired = get_variant(spec.variant).paired
    checkpoint, metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(METRIC, float("-inf")))
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    variant = get_variant(spec.variant).from_config(cfg)
    variant.load_state_dict(state["variant"], with_optimizers=False)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    with mlflow.start_run(run_id=spec.run_id):
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"checkpoint": checkpoint.path, "best_epoch": metrics.get("epoch")})
        info = log_generator(variant.generator, variant.multiple, spec.variant, cfg.__dict__, spec.registered_name,
                             reverse=variant.reverse_generator)
    version = info.registered_model_version
    client = MlflowClient(settings.mlflow_uri)
    if version is not None:
        tags = {"variant": spec.variant, "dataset": spec.dataset, "dataset_sha256": job.manifest.sha256,
                "run_id": spec.run_id, "multiple": str(variant.multiple), "step": str(variant.step),
                DESCRIPTOR_TAG: variant.descriptor.to_json(),  # what the generator is: serving, export, eval read it
                "psnr_def": PSNR_DEFINITION}  # how its val_psnr / val_gain_db were computed
        # what the model learned to undo (the spec drawn in training, else the dataset's), and so its task
        learned = synthesis(spec.variant_config().degrade, job.manifest) or job.manifest.degradation
        if learned:
            tags.update({"degradation": learned, "task": task_for_spec(learned)})
        # unpaired variants validate by cycle consistency: tag those as cycle metrics
        tags.update({(k if paired else k.replace("val_", "val_cycle_", 1)): f"{v:.4f}"
                     for k, v in metrics.items() if k.startswith("val_") and k != "val_images"})
        for k, v in tags.items():
            client.set_model_version_tag(spec.registered_name, str(version), k, v)
        warnings = finish_registration(client, spec, job.manifest, version, metrics, fit_s, paired)
        for warning in warnings:
            log.warning(warning)
            print(f"WARNING: {warning}", flush=True)
        if warnings:  # `train --follow` and `jobs status` show them (jobs.training.progress.Snapshot.warnings)
            client.set_tag(spec.run_id, TAG_WARNINGS, "\n".join(warnings))
    last = result.metrics or {}
    ran = {"steps": int(last.get("step", 0)), "epochs": float(last.get("step", 0)) / job.plan.steps_per_epoch,
           "samples": int(last.get("samples", 0))}
    now = int(time.time() * 1000)
    client.log_batch(spec.run_id, metrics=[Metric(k, float(v), now, ran["steps"]) for k, v in
                                           {"steps_run": ran["steps"], "epochs_run": ran["epochs"],
                                            "samples_run": ran["samples"], "time_fit_s": fit_s,
                                            "time_job_s": time.time() - started}.items()])
    print(json.dumps({"run_id": spec.run_id, "registered_model": spec.registered_name, "version": version, **ran,
                      "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")}}))
    return version, metrics


def run(spec: TrainSpec, settings: Settings | None = None):
    """The whole job: plan (refusing what can never run), train, register. -> (version, metrics),
    (None, {}) when preempted and re-queued (jobs.training.preempt). Raises Img2ImgError with one line
    for any refusal or training failure."""
    settings = settings or get_settings()
    started = time.time()
    if not ray.is_initialized():
        # Our own cluster only: the Jobs API puts its GCS address in RAY_ADDRESS; without an
        # explicit address ray.init() scans the machine and fails when another stack runs beside.
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
        on_stop()  # ray.init replaced our SIGTERM handler with its own sys.exit
    job = plan_job(spec, settings, ray.cluster_resources(), "this Ray cluster")
    _set_phase(settings, spec.run_id, "starting")  # rank 0 sets "training" once the workers run
    if spec.worker_resources:  # a split reservation: Ray places the workers when the nodes have room
        print(f"bigger than one node: its {spec.workers} workers reserve {spec.worker_resources} each in Ray "
              "Train's placement group; they start once the cluster has that free", flush=True)
    STARTED.set()
    with arrow_errors(settings):  # the datasets' shard footers are read here, through the store
        trainer = build_trainer(spec, settings, job)
    t_fit = time.time()
    watch = Watch(settings.mlflow_uri, spec.run_id, spec.stall_timeout_s) if spec.run_id else None
    if watch:
        watch.start()
    try:
        result = trainer.fit()
    except BaseException as e:
        # The watch interrupted a run that stopped making progress: Ray Train answers SIGINT by
        # aborting the run and raising SystemExit.
        if watch and watch.reason:
            raise Img2ImgError(watch.reason) from None
        if not isinstance(e, Exception):
            raise
        # a store down past its retries: its one line, not the worker's traceback
        raise arrow_unavailable(e, settings) or Img2ImgError(f"training failed: {_root_cause(e)}") from None
    finally:
        if watch:
            watch.stop()
    fit_s = time.time() - t_fit
    if (result.metrics or {}).get("preempted"):  # stopped at a checkpoint to make room: queue again
        requeue_self(settings, spec.run_id, int(result.metrics.get("step", 0)))  # logs the line
        return None, {}
    _set_phase(settings, spec.run_id, "registering")
    version, metrics = register(spec, settings, job, result, fit_s, started)
    _set_phase(settings, spec.run_id, "done")
    return version, metrics


def _root_cause(e: BaseException) -> str:
    """`ExcType: message` of the innermost error Ray wraps (a worker's or the controller's),
    one line, e.g. `EmptyShardError: worker 0 got no rows ...`."""
    inner: BaseException = e
    for _ in range(5):
        failures = getattr(inner, "worker_failures", None)
        nxt = (next(iter(failures.values()), None) if failures else None) or getattr(inner, "controller_failure", None)
        nxt = nxt or inner.__cause__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    matches = re.findall(r"^\s*([\w.]*(?:Error|Exception|Exit)\b:? .*)$", str(inner), flags=re.M)
    line = matches[-1] if matches else f"{type(inner).__name__}: {str(inner).strip().splitlines()[0] if str(inner).strip() else ''}"
    return line.strip()[:400]


def _set_phase(settings: Settings, run_id: str | None, phase: str) -> None:
    if not run_id:
        return
    try:
        MlflowClient(settings.mlflow_uri).set_tag(run_id, TAG_PHASE, phase)
    except Exception:  # progress display only: never fail a job over it
        log.warning("could not set the MLflow phase tag of run %s", run_id)


def main(argv: list[str] | None = None) -> int:
    spec_json, deadline = driver_args("img2img training job driver", argv)
    spec = TrainSpec.from_json(spec_json)
    settings = get_settings()
    on_stop()
    try:
        check_deadline(deadline)
        check_not_cancelled(settings, spec.run_id)
        run(spec, settings)
    except Img2ImgError as e:
        print(f"Error: {e}", file=sys.stderr)
        mark_ended(settings, spec.run_id, str(e))
        return 1
    except (JobStopped, KeyboardInterrupt):
        print("Stopped.", file=sys.stderr)
        if STARTED.is_set():
            mark_ended(settings, spec.run_id, "stopped by the user", status="KILLED")
        return 143
    except BaseException as e:
        mark_ended(settings, spec.run_id, f"{type(e).__name__}: {e}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
