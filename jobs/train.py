"""The Ray job driver: `python -m jobs.train --spec JSON` (what `img2img train` submits).

Checks the request against the cluster and the dataset, runs a TorchTrainer, then logs the
best checkpoint's generator to MLflow and registers it as a new version of the model, tagged
with variant, dataset, run id and validation metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.storage import Storage, arrow_filesystem
from jobs.manifest import Manifest, read_manifest
from jobs.plan import Cadence, TrainPlan, make_plan
from jobs.spec import TrainSpec
from translator.variants import VARIANTS, get_variant

log = logging.getLogger("img2img.train")
METRIC = "val_psnr"


def check_dataset(spec: TrainSpec, storage: Storage) -> Manifest:
    manifest = read_manifest(storage, spec.dataset)
    paired = get_variant(spec.variant).paired
    if paired != (manifest.kind == "paired"):
        want = "a paired dataset (input/target)" if paired else "an unpaired dataset (two domains, --kind unaligned)"
        other = " or ".join(n for n, v in VARIANTS.items() if v.paired == (manifest.kind == "paired"))
        raise Img2ImgError(f"variant {spec.variant!r} trains on {want}, but {spec.dataset!r} is {manifest.kind}; "
                           f"use {other} with it, or another dataset")
    if "train" not in manifest.splits or not manifest.counts.get("train"):
        raise Img2ImgError(f"dataset {spec.dataset!r} has no training rows")
    return manifest


def stream_rows(manifest: Manifest, split: str) -> dict[str, int]:
    """Rows per stream of a split: {"train": n} (paired) or {"train_a": n, "train_b": m}."""
    if manifest.kind == "paired":
        return {split: manifest.counts.get(split, 0)}
    return {f"{split}_{d}": sum(s.rows for s in manifest.shards(split, d)) if split in manifest.splits else 0
            for d in "ab"}


def plan_for(spec: TrainSpec, manifest: Manifest) -> TrainPlan:
    """The job's arithmetic (refused here, before submission, when impossible)."""
    val = [n for n in stream_rows(manifest, "val").values() if n > 0]
    return make_plan(stream_rows(manifest, "train"), spec.workers, spec.variant_config().batch_size, spec.epochs,
                     spec.max_steps, min(val) if val else 0, dataset=f"dataset {spec.dataset!r}")


def check_resources(spec: TrainSpec, resources: dict[str, float], where: str) -> None:
    """Refuse a request the cluster can never place (Ray would retry placing it forever)."""
    if not resources:
        return
    cpus = spec.workers * spec.cpus_per_worker
    if resources.get("CPU", 0) < cpus:
        have = resources.get("CPU", 0)
        fit = int(have // spec.cpus_per_worker) if spec.cpus_per_worker else 0
        raise Img2ImgError(f"--workers {spec.workers} x --cpus-per-worker {spec.cpus_per_worker:g} = {cpus:g} CPUs, "
                           f"but the cluster at {where} has {have:g}; use --workers {max(fit, 1)} or a smaller "
                           "--cpus-per-worker (fractions allowed), or add nodes")
    if spec.use_gpu and resources.get("GPU", 0) < spec.workers:
        raise Img2ImgError(f"--gpu asks for {spec.workers} GPU worker(s) but the cluster at {where} "
                           f"has {int(resources.get('GPU', 0))} GPU(s); use --cpu or add GPU nodes")


def check_resume(spec: TrainSpec, settings: Settings, plan: TrainPlan) -> str | None:
    """The checkpoint --resume continues from (refused now if missing or already at the end)."""
    if not spec.resume:
        return None
    path = latest_checkpoint(settings, spec.resume)
    key = path.split("/", 1)[1] + "/meta.json"
    try:
        step = int(json.loads(Storage(settings).get_bytes(key)).get("step", 0))
    except Exception:
        return path
    if step >= plan.total_steps:
        raise Img2ImgError(f"run {spec.resume}'s last checkpoint is at step {step}, but this request stops at step "
                           f"{plan.total_steps}; raise --max-steps/--epochs above {step}")
    return path


def checkpoint_prefix(settings: Settings, run_id: str) -> str:
    return f"{settings.bucket}/checkpoints/{run_id}"


def latest_checkpoint(settings: Settings, run_id: str) -> str:
    """Path (`bucket/checkpoints/RUN/checkpoint_...`) of the newest checkpoint an earlier run
    stored (for --resume; the workers open it with the store's filesystem)."""
    storage = Storage(settings)
    dirs = sorted({o.key.split("/")[2] for o in storage.list(f"checkpoints/{run_id}/")
                   if o.key.split("/")[2].startswith("checkpoint_") and o.key.endswith("state.pt")})
    if not dirs:
        raise Img2ImgError(f"run {run_id!r} has no checkpoint to resume from (see `img2img jobs ls` for run ids "
                           "of finished jobs)")
    return f"{checkpoint_prefix(settings, run_id)}/{dirs[-1]}"


def datasets_for(spec: TrainSpec, manifest: Manifest, settings: Settings, image_size: int) -> dict:
    from jobs.data import load_dataset

    load = lambda split, **kw: load_dataset(spec.dataset, split, settings, **kw)  # noqa: E731
    val_rows = stream_rows(manifest, "val")
    if manifest.kind == "paired":
        out = {"train": load("train", image_size=image_size).randomize_block_order()}
        if val_rows["val"]:
            out["val"] = load("val", augment=False)
        return out
    out = {f"train_{d}": load("train", image_size=image_size, domain=d).randomize_block_order() for d in "ab"}
    out.update({f"val_{d}": load("val", augment=False, domain=d) for d in "ab" if val_rows[f"val_{d}"]})
    return out


def run(spec: TrainSpec, settings: Settings | None = None):
    import mlflow
    import ray
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.tracking import log_generator
    from jobs.train_loop import STATE_FILE, train_loop_per_worker

    settings = settings or get_settings()
    started = time.time()
    spec.validate()
    storage = Storage(settings)
    manifest = check_dataset(spec, storage)
    plan = plan_for(spec, manifest)
    cadence = Cadence.parse(spec.checkpoint_every)
    if not ray.is_initialized():
        # Our own cluster only: the Jobs API puts its GCS address in RAY_ADDRESS; without an
        # explicit address ray.init() scans the machine and fails when another stack runs beside.
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    check_resources(spec, ray.cluster_resources(), "this Ray cluster")
    cfg = spec.variant_config()
    paired = get_variant(spec.variant).paired
    mlflow.set_tracking_uri(settings.mlflow_uri)
    run_id = spec.run_id
    resume_from = check_resume(spec, settings, plan)
    _set_phase(settings, run_id, "starting")  # rank 0 sets "training" once the workers run
    datasets = datasets_for(spec, manifest, settings, cfg.image_size)
    split = [k for k in datasets if k.startswith("train") or plan.split_val]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": json.loads(spec.to_json()), "variant_config": cfg.__dict__, "paired": paired,
                           "plan": plan.to_dict(), "cadence": dataclasses.asdict(cadence),
                           "tracking_uri": settings.mlflow_uri, "resume_path": resume_from, "init_path": spec.init_path},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"CPU": spec.cpus_per_worker}),
        run_config=RunConfig(
            name=run_id, storage_path=f"{settings.bucket}/checkpoints", storage_filesystem=arrow_filesystem(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints, checkpoint_score_attribute=METRIC,
                                               checkpoint_score_order="max"),
            # controller_failure_limit bounds how often Ray retries STARTING the worker group
            # (unbounded by default: an unplaceable job would stay RUNNING forever).
            failure_config=FailureConfig(max_failures=spec.max_failures, controller_failure_limit=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split),
    )
    t_fit = time.time()
    try:
        result = trainer.fit()
    except Exception as e:
        raise Img2ImgError(f"training failed: {_root_cause(e)}") from None
    t_fit = train_seconds = time.time() - t_fit
    _set_phase(settings, run_id, "registering")
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get(METRIC, float("-inf")))
    checkpoint, metrics = best
    import torch

    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    variant = get_variant(spec.variant).from_config(cfg)
    variant.load_state_dict(state["variant"], with_optimizers=False)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"checkpoint": checkpoint.path, "best_epoch": metrics.get("epoch")})
        info = log_generator(variant.generator, variant.multiple, spec.variant, cfg.__dict__, spec.registered_name,
                             reverse=variant.reverse_generator)
    version = info.registered_model_version
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if version is not None:
        client = MlflowClient(settings.mlflow_uri)
        tags = {"variant": spec.variant, "dataset": spec.dataset, "dataset_sha256": manifest.sha256,
                "run_id": run_id, "multiple": str(variant.multiple), "step": str(variant.step)}
        if manifest.degradation:  # what the model learned to undo, and so its task (GET /model shows it)
            from translator.tasks import task_for_spec

            tags.update({"degradation": manifest.degradation, "task": task_for_spec(manifest.degradation)})
        # unpaired variants validate by cycle consistency: tag those as cycle metrics
        tags.update({(k if paired else k.replace("val_", "val_cycle_", 1)): f"{v:.4f}"
                     for k, v in metrics.items() if k.startswith("val_")})
        for k, v in tags.items():
            client.set_model_version_tag(spec.registered_name, str(version), k, v)
        from jobs.tracking import finish_registration

        for warning in finish_registration(client, spec, manifest, version, metrics, train_seconds, paired):
            log.warning(warning)
            print(f"WARNING: {warning}", flush=True)
    last = result.metrics or {}
    ran = {"steps": int(last.get("step", 0)), "epochs": float(last.get("step", 0)) / plan.steps_per_epoch,
           "samples": int(last.get("samples", 0))}
    client = MlflowClient(settings.mlflow_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, ran["steps"]) for k, v in
                                      {"steps_run": ran["steps"], "epochs_run": ran["epochs"],
                                       "samples_run": ran["samples"], "time_fit_s": t_fit,
                                       "time_job_s": time.time() - started}.items()])
    _set_phase(settings, run_id, "done")
    print(json.dumps({"run_id": run_id, "registered_model": spec.registered_name, "version": version, **ran,
                      "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")}}))
    return version, metrics


def _root_cause(e: BaseException) -> str:
    """`ExcType: message` of the innermost error Ray wraps (a worker's or the controller's),
    one line, e.g. `EmptyShardError: worker 0 got no rows ...`."""
    import re

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
        from mlflow.tracking import MlflowClient

        from jobs.tracking import TAG_PHASE

        MlflowClient(settings.mlflow_uri).set_tag(run_id, TAG_PHASE, phase)
    except Exception:  # progress display only: never fail a job over it
        log.warning("could not set the MLflow phase tag of run %s", run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="img2img training job driver")
    parser.add_argument("--spec", required=True, help="TrainSpec as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = TrainSpec.from_json(args.spec)
    settings = get_settings()

    def _stopped(signum, frame):  # `img2img jobs stop`: the Jobs API sends SIGTERM first
        raise JobStopped()

    signal.signal(signal.SIGTERM, _stopped)
    try:
        run(spec, settings)
    except Img2ImgError as e:
        print(f"Error: {e}", file=sys.stderr)
        _mark_ended(settings, spec.run_id, str(e))
        return 1
    except (JobStopped, KeyboardInterrupt):
        print("Stopped.", file=sys.stderr)
        _mark_ended(settings, spec.run_id, "stopped by the user", status="KILLED")
        return 143
    except BaseException as e:
        _mark_ended(settings, spec.run_id, f"{type(e).__name__}: {e}")
        raise
    return 0


class JobStopped(BaseException):
    """SIGTERM from the Jobs API (a BaseException, so generic `except Exception` lets it through)."""


def _mark_ended(settings: Settings, run_id: str | None, reason: str, status: str = "FAILED") -> None:
    """End the MLflow run FAILED (with the error as a tag) or KILLED (stopped)."""
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        from jobs.tracking import TAG_PHASE

        client = MlflowClient(settings.mlflow_uri)
        client.set_tag(run_id, "error" if status == "FAILED" else "stopped", reason[:500])
        client.set_tag(run_id, TAG_PHASE, "failed" if status == "FAILED" else "stopped")
        client.set_terminated(run_id, status=status)
    except Exception:  # the job's own error matters more than this bookkeeping
        log.exception("could not mark MLflow run %s %s", run_id, status)


if __name__ == "__main__":
    sys.exit(main())
