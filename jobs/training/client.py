"""Submitting training jobs to the Ray cluster through the Jobs API (following and stopping them:
jobs.manage)."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import mlflow
import ray
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from cluster import admission
from cluster.admission import Footprint, capacity, check_fits, check_options
from cluster.errors import Img2ImgError
from cluster.preemption import PREEMPTIBLE, check_preempt
from cluster.services import cluster_resources, job_client, poll_until, require, require_mlflow  # noqa: F401  (re-exported)
from cluster.settings import Settings
from jobs.data.stream import synthesis
from jobs.training.driver import START_RETRIES, plan_job, run
from jobs.training.finetune import resolve_init
from jobs.training.preempt import preempt_for
from jobs.training.spec import TrainSpec
from registry.tracking import (
    TAG_PHASE,
    TAG_STEPS_PER_EPOCH,
    TAG_TIME_BUDGET,
    TAG_TOTAL_STEPS,
    experiment_id,
)

log = logging.getLogger(__name__)
PACKAGES = ("cluster", "registry", "jobs", "translator", "serving")
WORKER_START_TIMEOUT_S = 120


def serve_cpus(settings: Settings) -> float:
    """CPUs that Ray Serve replicas (any app) hold now, from Serve's REST API: replicas starting
    or running x their `num_cpus`. 0 when Serve is not running or cannot be asked."""
    try:
        r = httpx.get(settings.ray_address.rstrip("/") + "/api/serve/applications/",
                      headers=settings.ray_auth_headers(), timeout=10)
        apps = (r.json().get("applications") or {}) if r.status_code == 200 else {}
    except Exception:
        return 0.0
    held = 0.0
    for app in apps.values():
        for dep in (app.get("deployments") or {}).values():
            options = (dep.get("deployment_config") or {}).get("ray_actor_options") or {}
            alive = [r for r in dep.get("replicas") or [] if r.get("state") in ("STARTING", "RUNNING", "UPDATING")]
            held += len(alive) * float(options.get("num_cpus", 1) or 0)
    return held


def code_version() -> str:
    root = Path(__file__).resolve().parents[2]  # the repository: jobs/training/client.py
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:
        sha = ""
    return f"{version('img2img-platform')}" + (f"+{sha}" if sha else "")


def preflight(spec: TrainSpec, settings: Settings, resources: dict[str, float] | None = None):
    """Everything that can be refused before anything is submitted (`jobs.training.driver.plan_job`, the
    driver's own planning step): the options, the dataset against the rows/workers/batch
    arithmetic, the cluster's `resources` (None: not checked), the --resume target.
    -> (manifest, plan)."""
    if spec.init_from:  # before validate(): the parent's config fills what the user left unset
        resolve_init(spec, settings)
    job = plan_job(spec, settings, resources, settings.ray_address)
    return job.manifest, job.plan


def start_run(spec: TrainSpec, settings: Settings, manifest, plan=None, tags: dict | None = None) -> tuple[str, str]:
    """Create the MLflow run up front (so its URL can be shown now) and log the params. `tags`:
    more tags the run is created with (a search trial's parent and trial id: a run never exists
    without them, even if its job is stopped the next moment)."""
    require_mlflow(settings)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = MlflowClient(settings.mlflow_uri)
    exp_id = experiment_id(client, spec.experiment)
    run = client.create_run(exp_id, run_name=f"{spec.variant}-{spec.dataset}",
                            tags={"variant": spec.variant, "dataset": spec.dataset,
                                  **({"resumed_from": spec.resume} if spec.resume else {}),
                                  **({"parent": spec.parent} if spec.parent else {}), **(tags or {})})
    cfg = spec.variant_config().__dict__
    params = {"variant": spec.variant, "dataset": spec.dataset, "dataset_sha256": manifest.sha256,
              "workers": spec.workers, "device": "gpu" if spec.use_gpu else "cpu",
              "cpus_per_worker": spec.cpus_per_worker, "epochs": spec.epochs, "max_steps": spec.max_steps,
              "code_version": code_version(), "registered_model": spec.registered_name}
    params.update({f"cfg.{k}": v for k, v in cfg.items()})
    # where the training inputs come from, `degrade` resolved for this dataset (`auto` names its spec)
    made = synthesis(cfg["degrade"], manifest)
    params["training_inputs"] = f"drawn afresh: {made}" if made else "stored"
    if plan is not None:
        params.update(steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
                      checkpoint_every=spec.checkpoint_every, time_budget_s=spec.time_budget_s)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if plan is not None:
        tags = {TAG_PHASE: "submitted", TAG_TOTAL_STEPS: str(plan.total_steps),
                TAG_STEPS_PER_EPOCH: str(plan.steps_per_epoch)}
        if spec.time_budget_s:
            tags[TAG_TIME_BUDGET] = str(spec.time_budget_s)
        for k, v in tags.items():
            client.set_tag(run.info.run_id, k, v)
    url = f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    return run.info.run_id, url


def package_dir(name: str) -> Path:
    """Where our package `name` is: the repository's folder, or, in a job that submits jobs (a
    pipeline's driver), the folder Ray unpacked it to (each py_module its own, on sys.path)."""
    root = Path(__file__).resolve().parents[2]  # the repository: jobs/training/client.py
    for base in (root, *(Path(p) for p in sys.path if p)):
        if (base / name / "__init__.py").is_file():
            return base / name
    raise Img2ImgError(f"cannot find the {name!r} package to send with the job")


def runtime_env(settings: Settings, placement_timeout_s: float = WORKER_START_TIMEOUT_S) -> dict:
    """Our code travels with the job; only non-secret settings do (keys stay on the cluster).
    placement_timeout_s: how long Ray Train waits, per try, for the cluster to place a worker
    group (at the start, and at every restart after a lost worker or node); see `placement_timeout`."""
    # job_env's RAY_API_SERVER_ADDRESS: Ray Train's own actors (PlacementGroupCleaner) query the
    # state API with no address; without it they scan the machine and fail beside another Ray.
    env = {**settings.job_env(), "PYTHONUNBUFFERED": "1",
           # the job retries a failed start twice (see jobs.training.driver), then fails with Ray's reason
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{max(placement_timeout_s, WORKER_START_TIMEOUT_S):.0f}"}
    return {"py_modules": [str(package_dir(p)) for p in PACKAGES], "env_vars": env}


def placement_timeout(queue_timeout_s: float) -> float:
    """Ray Train's worker-group start timeout (seconds, per try). Workers the cluster cannot
    place yet (a job whose workers reserve their own CPUs across nodes,
    `cluster.admission.worker_reservation`; the nodes left after a node loss) wait in Ray's
    placement-group queue as a queued job waits for admission: all tries together up to
    `queue_timeout_s`, never less than WORKER_START_TIMEOUT_S a try (a busy small machine needs
    over a minute)."""
    return max(float(WORKER_START_TIMEOUT_S), queue_timeout_s / (START_RETRIES + 1))


def admit(settings: Settings, footprint: Footprint, across_nodes: bool = False):
    """The one capacity check before any cluster job is submitted: refuse a `footprint` that
    could never start here (see `cluster.admission.check_fits`; `across_nodes`: a training job,
    which may split its reservation over nodes). -> the cluster's admission Capacity (None when
    its nodes advertise none)."""
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    check_fits(footprint, cluster_resources(settings), settings.ray_address, serve_cpus(settings),
               cap.largest if cap else None, across_nodes)
    return cap


def submit_job(settings: Settings, *, entrypoint: str, metadata: dict, footprint: Footprint,
               priority: str = "normal", queue_timeout_s: float | None = None, preempt: bool = False,
               preempting: list | None = None, worker_resources: dict | None = None) -> str:
    """Every cluster job (training, evaluation, the gate's evaluation, batch, search) is
    submitted here: checked by `admit`, then handed to Ray Jobs with its whole footprint
    reserved, so it waits QUEUED (Ray: PENDING) until it fits. `worker_resources`: a training
    job bigger than one node (`cluster.admission.worker_reservation`, also in its spec): the
    entrypoint reserves its data and driver share and Ray Train's placement group the workers'.
    With `preempt`, the lower-priority training jobs it needs room from are asked to checkpoint
    and re-queue (`jobs.training.preempt`); their ids are appended to `preempting`. -> the Ray
    submission id."""
    timeout = check_options(priority, queue_timeout_s)
    check_preempt(priority, preempt)
    cap = admit(settings, footprint, across_nodes=bool(worker_resources))
    client = job_client(settings)
    env = runtime_env(settings, placement_timeout(timeout))
    job_id = admission.submit(client, entrypoint=entrypoint, runtime_env=env,
                              metadata=metadata, footprint=footprint, priority=priority,
                              queue_timeout_s=queue_timeout_s, cap=cap, worker_resources=worker_resources)
    if preempt:
        (preempting if preempting is not None else []).extend(preempt_for(settings, client, job_id, cap))
    return job_id


def submit(spec: TrainSpec, settings: Settings, priority: str = "normal", queue_timeout_s: float | None = None,
           preempt: bool = False) -> dict:
    """Check the request (see `preflight`, `admit`), create its MLflow run, submit the job with
    its footprint reserved (`submit_job`; `preempt`: make room by preempting lower priorities).
    -> {"job_id", "run_id", "run_url", "plan": TrainPlan, "preempting": [Ray ids]}. Raises
    Img2ImgError when refused."""
    # The options first (no service needed): a bad one is named even while the stack is down.
    check_options(priority, queue_timeout_s)
    check_preempt(priority, preempt)
    manifest, plan = preflight(spec, settings)
    footprint = Footprint(spec.workers, spec.cpus_per_worker, 1.0 if spec.use_gpu else 0.0)
    cap = admit(settings, footprint, across_nodes=True)
    # bigger than the largest node: the workers reserve their share in their placement group
    spec.worker_resources = admission.worker_reservation(footprint, cap)
    job_client(settings)
    spec.run_id, url = start_run(spec, settings, manifest, plan)
    entrypoint = f"python -m jobs.training.driver --spec {shlex.quote(spec.to_json())}"
    metadata = {"img2img": "train", "variant": spec.variant, "dataset": spec.dataset, "run_id": spec.run_id,
                "model": spec.registered_name, PREEMPTIBLE: "true"}  # it can stop at a checkpoint and resume
    preempting: list[str] = []
    try:
        job_id = submit_job(settings, entrypoint=entrypoint, metadata=metadata, footprint=footprint,
                            priority=priority, queue_timeout_s=queue_timeout_s, preempt=preempt,
                            preempting=preempting, worker_resources=spec.worker_resources)
    except Img2ImgError:
        MlflowClient(settings.mlflow_uri).set_terminated(spec.run_id, status="FAILED")
        raise
    return {"job_id": job_id, "run_id": spec.run_id, "run_url": url, "plan": plan, "preempting": preempting}


def run_local(spec: TrainSpec, settings: Settings) -> dict:
    """--local: the same driver in this process, on a throwaway local Ray (for debugging)."""
    manifest, plan = preflight(spec, settings)
    spec.run_id, url = start_run(spec, settings, manifest, plan)
    ray.init(address="local", num_cpus=max(2, int(spec.workers * spec.cpus_per_worker) + 1),
             include_dashboard=False, log_to_driver=True)
    try:
        version, metrics = run(spec, settings)
    finally:
        ray.shutdown()
    return {"job_id": None, "run_id": spec.run_id, "run_url": url, "version": version}


__all__ = ["submit", "submit_job", "admit", "run_local", "job_client"]
