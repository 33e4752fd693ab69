"""The Ray job driver: `python -m jobs.train --spec JSON` (what `img2img train` submits).

Checks the request against the cluster and the dataset, runs a TorchTrainer, then logs the
best checkpoint's generator to MLflow and registers it as a new version of the model, tagged
with variant, dataset, run id and validation metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.storage import Storage, arrow_filesystem
from jobs.manifest import Manifest, read_manifest
from jobs.spec import TrainSpec
from translator.variants import get_variant

log = logging.getLogger("img2img.train")
METRIC = "val_psnr"


def check_dataset(spec: TrainSpec, storage: Storage) -> Manifest:
    manifest = read_manifest(storage, spec.dataset)
    paired = get_variant(spec.variant).paired
    if paired != (manifest.kind == "paired"):
        want = "paired (input/target)" if paired else "unpaired (two domains)"
        raise Img2ImgError(f"variant {spec.variant!r} needs a {want} dataset, but {spec.dataset!r} is {manifest.kind}")
    if "train" not in manifest.splits or not manifest.counts.get("train"):
        raise Img2ImgError(f"dataset {spec.dataset!r} has no training rows")
    return manifest


def checkpoint_prefix(settings: Settings, run_id: str) -> str:
    return f"{settings.bucket}/checkpoints/{run_id}"


def latest_checkpoint(settings: Settings, run_id: str) -> str:
    """Path (`bucket/checkpoints/RUN/checkpoint_...`) of the newest checkpoint an earlier run
    stored (for --resume; the workers open it with the store's filesystem)."""
    storage = Storage(settings)
    dirs = sorted({o.key.split("/")[2] for o in storage.list(f"checkpoints/{run_id}/")
                   if o.key.split("/")[2].startswith("checkpoint_") and o.key.endswith("state.pt")})
    if not dirs:
        raise Img2ImgError(f"run {run_id} has no checkpoint to resume from")
    return f"{checkpoint_prefix(settings, run_id)}/{dirs[-1]}"


def datasets_for(spec: TrainSpec, manifest: Manifest, settings: Settings, image_size: int) -> dict:
    from jobs.data import load_dataset

    load = lambda split, **kw: load_dataset(spec.dataset, split, settings, **kw)  # noqa: E731
    has_val = manifest.counts.get("val", 0) > 0
    if manifest.kind == "paired":
        out = {"train": load("train", image_size=image_size).randomize_block_order()}
        if has_val:
            out["val"] = load("val", augment=False)
        return out
    out = {f"train_{d}": load("train", image_size=image_size, domain=d).randomize_block_order() for d in "ab"}
    if has_val:
        out.update({f"val_{d}": load("val", augment=False, domain=d) for d in "ab"})
    return out


def run(spec: TrainSpec, settings: Settings | None = None):
    import mlflow
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.tracking import log_generator
    from jobs.train_loop import STATE_FILE, train_loop_per_worker

    settings = settings or get_settings()
    spec.validate()
    storage = Storage(settings)
    manifest = check_dataset(spec, storage)
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    if spec.use_gpu and ray.cluster_resources().get("GPU", 0) < spec.workers:
        raise Img2ImgError(f"--gpu asks for {spec.workers} GPU(s) but the cluster has "
                           f"{int(ray.cluster_resources().get('GPU', 0))}; use --cpu or add GPU workers")
    cfg = spec.variant_config()
    paired = get_variant(spec.variant).paired
    train_rows = manifest.counts["train"] // (1 if paired else 2)
    steps_per_epoch = max(1, train_rows // (spec.workers * cfg.batch_size))
    total_steps = spec.max_steps or spec.epochs * steps_per_epoch
    if spec.max_steps:
        spec.epochs = max(spec.epochs, math.ceil(spec.max_steps / steps_per_epoch))
    mlflow.set_tracking_uri(settings.mlflow_uri)
    run_id = spec.run_id
    resume_from = latest_checkpoint(settings, spec.resume) if spec.resume else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": json.loads(spec.to_json()), "variant_config": cfg.__dict__, "paired": paired,
                           "total_steps": total_steps, "tracking_uri": settings.mlflow_uri,
                           "resume_path": resume_from},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"CPU": spec.cpus_per_worker}),
        run_config=RunConfig(
            name=run_id, storage_path=f"{settings.bucket}/checkpoints", storage_filesystem=arrow_filesystem(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints, checkpoint_score_attribute=METRIC,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=spec.max_failures)),
        datasets=datasets_for(spec, manifest, settings, cfg.image_size),
    )
    result = trainer.fit()
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
    if version is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(settings.mlflow_uri)
        tags = {"variant": spec.variant, "dataset": spec.dataset, "dataset_sha256": manifest.sha256,
                "run_id": run_id, "multiple": str(variant.multiple), "step": str(variant.step)}
        tags.update({k: f"{v:.4f}" for k, v in metrics.items() if k.startswith("val_")})
        for k, v in tags.items():
            client.set_model_version_tag(spec.registered_name, str(version), k, v)
    print(json.dumps({"run_id": run_id, "registered_model": spec.registered_name, "version": version,
                      "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")}}))
    return version, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="img2img training job driver")
    parser.add_argument("--spec", required=True, help="TrainSpec as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = TrainSpec.from_json(args.spec)
    settings = get_settings()
    try:
        run(spec, settings)
    except Img2ImgError as e:
        print(f"Error: {e}", file=sys.stderr)
        _mark_failed(settings, spec.run_id, str(e))
        return 1
    except BaseException as e:
        _mark_failed(settings, spec.run_id, f"{type(e).__name__}: {e}")
        raise
    return 0


def _mark_failed(settings: Settings, run_id: str | None, reason: str) -> None:
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(settings.mlflow_uri)
        client.set_tag(run_id, "error", reason[:500])
        client.set_terminated(run_id, status="FAILED")
    except Exception:  # the job's own error matters more than this bookkeeping
        log.exception("could not mark MLflow run %s failed", run_id)


if __name__ == "__main__":
    sys.exit(main())
