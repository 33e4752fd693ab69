"""MLflow: the run of a training job, its metrics and images, and the model it registers."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import tenacity
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from PIL import Image

from cluster.errors import Img2ImgError

log = logging.getLogger(__name__)
ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _lost_upsert(e: BaseException) -> bool:
    """MLflow's SQL store sets a tag or alias by reading the row, then inserting it if absent: when
    two clients set the same new key at once, one insert hits the unique constraint and the call
    fails (BAD_REQUEST, IntegrityError). Done again it finds the row and updates it."""
    return isinstance(e, MlflowException) and any(
        marker in str(e) for marker in ("IntegrityError", "UNIQUE constraint", "duplicate key"))


def upsert(write, *args) -> None:
    """`write(*args)`, an MLflow setter that replaces what is there (`set_registered_model_tag`,
    `set_model_version_tag`, `set_registered_model_alias`), safe when several clients set the same
    key at once: a call that lost that race is made again (tenacity, up to 3 tries)."""
    tenacity.Retrying(retry=tenacity.retry_if_exception(_lost_upsert), stop=tenacity.stop_after_attempt(3),
                      wait=tenacity.wait_random(0, 0.2), reraise=True)(write, *args)


def experiment_id(client, name: str) -> str:
    """Get-or-create the MLflow experiment `name` -> its id. Safe when several clients create it
    at once: the server accepts one create and refuses the others with RESOURCE_ALREADY_EXISTS,
    which then means "read it". Raises Img2ImgError for an experiment that was deleted (MLflow
    keeps its name taken and refuses runs in it)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except MlflowException as e:
            if e.error_code not in ALREADY_EXISTS:
                raise
        exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        raise Img2ImgError(f"MLflow experiment {name!r} was deleted; restore it (`mlflow experiments restore "
                           f"--experiment-id {exp.experiment_id}`) or pick another --experiment")
    return exp.experiment_id


class RunLogger:
    """Logs into one existing MLflow run through the tracking server (artifacts are proxied by
    the server, so workers need no object-store keys for this)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, image: Image.Image, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            image.save(path)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent))

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


# Tags the job keeps on its MLflow run: the source of truth for `train --follow`,
# `jobs status` and the demo's live display (no parsing of Ray's log text).
TAG_PHASE = "img2img.phase"  # planned | training | registering | done | failed | stopped
TAG_TOTAL_STEPS = "img2img.total_steps"
TAG_STEPS_PER_EPOCH = "img2img.steps_per_epoch"
TAG_STARTS = "img2img.worker_starts"  # 1 on the first start; each worker-group restart adds one
TAG_RESTORED = "img2img.restored_step"  # the step of the checkpoint the latest start restored
TAG_CHECKPOINT = "img2img.checkpoint_step"  # the step of the latest checkpoint Ray Train holds: a restart resumes there
TAG_TIME_BUDGET = "img2img.time_budget_s"
TAG_TRAINING_SINCE = "img2img.training_since"  # epoch seconds when the workers first started training
TAG_PREEMPT_REQUEST = "img2img.preempt_request"  # the Ray id of a job that asks this run to stop at a checkpoint
TAG_PREEMPTED = "img2img.preempted"  # "preempted by ID, re-queued, resumes at step N", set when it did
TAG_NODE_LOST = "img2img.node_lost"  # "node ID (IP) lost at step N; ..." for the latest Ray node the job lost
TAG_WAITING = "img2img.waiting_for_workers"  # while Ray cannot place the worker group yet: what it waits for
TAG_WARNINGS = "img2img.warnings"  # the job's verdicts on what it registered (e.g. worse than its input), one a line


def record_start(logger: RunLogger, restored_step: int | None) -> None:
    """Rank 0, at every (re)start of the worker group: count the start, note what was restored."""
    run = logger.client.get_run(logger.run_id)
    starts = int(run.data.tags.get(TAG_STARTS, "0")) + 1
    logger.client.set_tag(logger.run_id, TAG_STARTS, str(starts))
    if TAG_TRAINING_SINCE not in run.data.tags:
        logger.client.set_tag(logger.run_id, TAG_TRAINING_SINCE, f"{time.time():.1f}")
    logger.client.set_tag(logger.run_id, TAG_PHASE, "training")
    if restored_step is not None:
        logger.client.set_tag(logger.run_id, TAG_RESTORED, str(restored_step))
    elif starts > 1:
        logger.client.set_tag(logger.run_id, TAG_RESTORED, "none")


def model_signature():
    # Any batch, any height/width (a multiple of the network's stride): float32 NCHW in [-1, 1].
    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def model_requirements() -> list[str]:
    """What the logged model needs, pinned to this job's versions. Given explicitly because
    mlflow's inference imports the model in a subprocess: seconds of every job on a small machine."""
    from mlflow.pytorch import get_default_pip_requirements  # noqa: I001  (torch: only when a model is logged)
    # torch without its local `+cpu` label (no index serves it), and cloudpickle
    pinned = [r.split("+")[0] for r in get_default_pip_requirements()]
    return [*pinned, f"numpy=={np.__version__}"]


def log_generator(generator, multiple: int, variant: str, config: dict, registered_name: str | None,
                  reverse=None):
    """Log the generator as an MLflow pytorch model (pickled, so any input size works: mlflow 3's
    default pt2 export would fix H x W), with the translator code beside it.

    An unpaired variant passes its B->A generator as `reverse`: both are logged as one
    `TwoWayGenerator` (forward = A->B, as before), so the endpoint can serve either direction."""
    # torch, mlflow.pytorch and the translator load here, not with the module: the CLI's job
    # commands import this module, and answer in about 2 s instead of 4 without torch
    import mlflow.pytorch

    import translator
    from translator.nets.twoway import TwoWayGenerator

    size = max(multiple, 32)
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    generator = generator.cpu().eval()
    if reverse is not None:
        generator = TwoWayGenerator(generator, reverse.cpu().eval()).eval()
    info = mlflow.pytorch.log_model(
        generator, name="model", serialization_format="pickle", signature=model_signature(),
        input_example=example, code_paths=[str(Path(translator.__file__).parent)],
        pip_requirements=model_requirements(),
        registered_model_name=registered_name, await_registration_for=60,
        metadata={"variant": variant, "multiple": multiple, "config": json.dumps(config),
                  "directions": "AtoB,BtoA" if reverse is not None else "AtoB"},
    )
    return info


# Who computed a stored `eval.<dataset>.*` result (its `source` tag): an evaluation job, or the
# training job's validation of the registered checkpoint in fp32 on every val row (the same
# numbers, see jobs.training.worker.validate). "training" (before that: bf16 where the CPU has it, rows
# dropped by Ray's equal split) is not trusted: the gate scores such a version again.
SOURCE_EVAL, SOURCE_TRAINING = "eval", "training-fp32"
TRUSTED_SOURCES = (SOURCE_EVAL, SOURCE_TRAINING)


def as_stored(metrics: dict[str, float]) -> dict[str, float]:
    """Metric means as the registry keeps them (`eval_tags`: 4 decimals), so a version scored just
    now and one read back from its tags are compared and printed on the same numbers."""
    return {k: float(f"{v:.4f}") for k, v in metrics.items()}


def eval_tags(summary: dict) -> dict[str, str]:
    """An evaluation summary (see jobs.evaluation.driver.run) -> model-version tags `eval.<dataset>.*`:
    the mean metrics (PSNR/gain in dB, SSIM in [0, 1]; unpaired: cycle_psnr, cycle_ssim), and
    what they were computed on (split, dataset sha256, image count, MLflow run, `source`: who
    computed them, SOURCE_EVAL by default; `psnr_def`: the set-PSNR definition, always the
    current `translator.metrics.PSNR_DEFINITION`)."""
    from translator.metrics import PSNR_DEFINITION
    prefix = f"eval.{summary['dataset']}."
    tags = {prefix + k: f"{v:.4f}" for k, v in as_stored(summary["metrics"]).items()}
    tags.update({prefix + "split": summary["split"], prefix + "sha256": summary["dataset_sha256"],
                 prefix + "images": str(summary["images"]), prefix + "run_id": summary.get("run_id") or "",
                 prefix + "source": summary.get("source", SOURCE_EVAL), prefix + "psnr_def": PSNR_DEFINITION})
    return tags


def describe_source(source: str | None, run_id: str | None, now: bool = False) -> str:
    """Where a result came from, for people: 'eval job (run 0123abcd)' ('eval job now' for one
    the gate has just run) or 'training val, fp32 (run 0123abcd)'."""
    what = {SOURCE_EVAL: "eval job now" if now else "eval job", SOURCE_TRAINING: "training val, fp32"}.get(
        source or SOURCE_EVAL, f"{source} (not trusted)")
    return f"{what} (run {run_id[:8]})" if run_id else what


def _fmt_metrics(m: dict) -> str:
    parts = []  # only the metric keys; m may hold split, sha256, ... too
    for k in ("psnr", "ssim", "input_psnr", "gain_db", "cycle_psnr", "cycle_ssim"):
        if m.get(k) is not None:
            v = float(m[k])
            parts.append(f"{k} {v:+.2f} dB" if k == "gain_db" else f"{k} {v:.4f}" if "ssim" in k
                         else f"{k} {v:.2f} dB")
    return ", ".join(parts)


def logged_config(params: dict[str, str]) -> dict[str, str]:
    """A training run's variant config as its MLflow params keep it: the `cfg.KEY` params, keyed by
    KEY, values as logged text (lists as "[1, 1]", None as "None"), sorted by key."""
    return {k[4:]: v for k, v in sorted(params.items()) if k.startswith("cfg.")}


def model_card(name: str, version: str, tags: dict, params: dict) -> str:
    """The short markdown card kept in a registered version's description: variant, config,
    dataset (name, sha256, degradation), parent, steps, training time, device, validation and
    evaluation results, the rollout run that promoted it, and a warning if the model makes images
    worse than its input."""
    cfg = logged_config(params)
    cycle = tags.get("val_cycle_psnr") is not None
    val = {k[4:]: tags[k] for k in tags if k.startswith("val_") and k[4:] in
           ("psnr", "ssim", "input_psnr", "gain_db", "cycle_psnr", "cycle_ssim")}
    lines = [f"### {name} v{version}: {tags.get('variant', '?')}",
             f"- config: {json.dumps(cfg)}" if cfg else "",
             f"- dataset: {tags.get('dataset', '?')} (sha256 {tags.get('dataset_sha256', '?')[:12]}, "
             f"degradation {tags.get('degradation') or 'none/unpaired'})",
             f"- fine-tuned from: {tags['parent']}" if tags.get("parent") else "",
             f"- steps: {tags.get('step', '?')}, training time: {tags.get('train_seconds', '?')} s, "
             f"device: {params.get('device', '?')} x {params.get('workers', '?')} worker(s)",
             f"- own validation{' (cycle)' if cycle else ''}: {_fmt_metrics(val)}" if val else ""]
    evals = sorted({k.split(".")[1] for k in tags if k.startswith("eval.") and k.count(".") >= 2})
    for ds in evals:
        m = {k.split(".", 2)[2]: tags[k] for k in tags if k.startswith(f"eval.{ds}.")}
        lines.append(f"- eval on {ds}/{m.get('split', '?')} ({m.get('images', '?')} images, sha256 "
                     f"{m.get('sha256', '?')[:12]}; {describe_source(m.get('source'), m.get('run_id'))}): "
                     f"{_fmt_metrics(m)}")
    if tags.get("promoted_by_rollout"):
        lines.append(f"- promoted after a live rollout: MLflow run {tags['promoted_by_rollout']} (experiment rollouts)")
    if tags.get("worse_than_input") == "true":
        lines.append("- WARNING: its output is worse than its input on its validation set")
    return "\n".join(line for line in lines if line)


def write_model_card(client, name: str, version: str) -> str:
    """(Re)write the model card of a registered version from its tags and its run's params."""
    mv = client.get_model_version(name, version)
    try:
        params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    except Exception:  # the run may be gone; the card still has the tags
        params = {}
    card = model_card(name, str(version), dict(mv.tags or {}), dict(params))
    client.update_model_version(name, version, description=card)
    return card


def finish_registration(client, spec, manifest, version, metrics: dict, train_seconds: float, paired: bool) -> list[str]:
    """After training registered `version`: record the dataset's degradation, the training time,
    the parent (--init-from), whether it is worse than its input; give a new registered model
    its evaluation set (the training dataset's val split) and, if the version was validated on
    exactly that set (every one of its rows: `val_images`), store those numbers as its evaluation
    (source SOURCE_TRAINING); write the model card.
    -> warnings to print at the end of the job."""
    name, version = spec.registered_name, str(version)
    warnings = []
    tags = {"degradation": manifest.degradation or "", "train_seconds": f"{train_seconds:.0f}"}
    if getattr(spec, "parent", None):
        tags["parent"] = spec.parent
    gain = metrics.get("val_gain_db")
    if paired and gain is not None and gain < 0:
        tags["worse_than_input"] = "true"
        warnings.append(f"{name} v{version} makes images WORSE than its input on the validation set "
                        f"(gain {gain:+.2f} dB: {metrics['val_psnr']:.2f} dB vs {metrics['val_input_psnr']:.2f} dB "
                        "for the input); `models promote` will refuse it without --force")
    model_tags = client.get_registered_model(name).tags or {}
    if not model_tags.get("eval_dataset"):
        client.set_registered_model_tag(name, "eval_dataset", spec.dataset)
        client.set_registered_model_tag(name, "eval_split", "val")
        model_tags = {"eval_dataset": spec.dataset, "eval_split": "val"}
    scored = int(metrics.get("val_images", -1))
    if (model_tags.get("eval_dataset") == spec.dataset and model_tags.get("eval_split", "val") == "val"
            and manifest.counts.get("val") and scored == manifest.counts["val"]):
        # Training validated the best checkpoint on every val image, whole, through the same tiled
        # path, metrics and fp32 as `img2img eval` (tests/integration/test_eval_gate.py compares
        # the two): the same numbers, no second pass needed.
        keys = ("psnr", "ssim", "input_psnr", "input_ssim", "gain_db", "improved_share", "unchanged") if paired \
            else ("psnr", "ssim")
        means = {(k if paired else f"cycle_{k}"): float(metrics[f"val_{k}"]) for k in keys if f"val_{k}" in metrics}
        tags.update(eval_tags({"dataset": spec.dataset, "split": "val", "dataset_sha256": manifest.sha256,
                               "images": scored, "metrics": means, "run_id": spec.run_id,
                               "source": SOURCE_TRAINING}))
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    if getattr(spec, "parent", None):
        client.set_tag(spec.run_id, "parent", spec.parent)
    write_model_card(client, name, version)
    return warnings
