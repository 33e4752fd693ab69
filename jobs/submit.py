"""Submitting training jobs to the Ray cluster through the Jobs API, and managing them."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.services import cluster_resources, poll_until, require, require_mlflow  # noqa: F401  (re-exported)
from cluster.settings import Settings
from jobs.spec import TrainSpec

PACKAGES = ("cluster", "jobs", "translator", "serving")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
WORKER_START_TIMEOUT_S = 120


def job_client(settings: Settings):
    """A JobSubmissionClient for the configured cluster, with Ray's auth token found for you."""
    settings.apply_ray_env()
    require("the Ray Jobs API", settings.ray_address, "/api/version", settings.ray_auth_headers())
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(settings.ray_address)
    except Exception as e:
        raise Img2ImgError(f"Ray at {settings.ray_address} refused the connection: {str(e).splitlines()[0]}") from None


def serve_cpus(settings: Settings) -> float:
    """CPUs that Ray Serve replicas (any app) hold now, from Serve's REST API: replicas starting
    or running x their `num_cpus`. 0 when Serve is not running or cannot be asked."""
    import httpx

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
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:
        sha = ""
    return f"{version('img2img-platform')}" + (f"+{sha}" if sha else "")


def preflight(spec: TrainSpec, settings: Settings, resources: dict[str, float] | None = None):
    """Everything that can be refused before anything is submitted (`jobs.train.plan_job`, the
    driver's own planning step): the options, the dataset against the rows/workers/batch
    arithmetic, the cluster's `resources` (None: not checked), the --resume target.
    -> (manifest, plan)."""
    from jobs.train import plan_job

    if spec.init_from:  # before validate(): the parent's config fills what the user left unset
        from jobs.finetune import resolve_init

        resolve_init(spec, settings)
    job = plan_job(spec, settings, resources, settings.ray_address)
    return job.manifest, job.plan


def start_run(spec: TrainSpec, settings: Settings, manifest, plan=None) -> tuple[str, str]:
    """Create the MLflow run up front (so its URL can be shown now) and log the params."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.tracking import experiment_id

    require_mlflow(settings)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = MlflowClient(settings.mlflow_uri)
    exp_id = experiment_id(client, spec.experiment)
    run = client.create_run(exp_id, run_name=f"{spec.variant}-{spec.dataset}",
                            tags={"variant": spec.variant, "dataset": spec.dataset,
                                  **({"resumed_from": spec.resume} if spec.resume else {}),
                                  **({"parent": spec.parent} if spec.parent else {})})
    cfg = spec.variant_config().__dict__
    params = {"variant": spec.variant, "dataset": spec.dataset, "dataset_sha256": manifest.sha256,
              "workers": spec.workers, "device": "gpu" if spec.use_gpu else "cpu",
              "cpus_per_worker": spec.cpus_per_worker, "epochs": spec.epochs, "max_steps": spec.max_steps,
              "code_version": code_version(), "registered_model": spec.registered_name}
    params.update({f"cfg.{k}": v for k, v in cfg.items()})
    from mlflow.entities import Param

    if plan is not None:
        params.update(steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
                      checkpoint_every=spec.checkpoint_every, time_budget_s=spec.time_budget_s)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if plan is not None:
        from jobs.tracking import TAG_PHASE, TAG_STEPS_PER_EPOCH, TAG_TIME_BUDGET, TAG_TOTAL_STEPS

        tags = {TAG_PHASE: "submitted", TAG_TOTAL_STEPS: str(plan.total_steps),
                TAG_STEPS_PER_EPOCH: str(plan.steps_per_epoch)}
        if spec.time_budget_s:
            tags[TAG_TIME_BUDGET] = str(spec.time_budget_s)
        for k, v in tags.items():
            client.set_tag(run.info.run_id, k, v)
    url = f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    return run.info.run_id, url


def runtime_env(settings: Settings) -> dict:
    """Our code travels with the job; only non-secret settings do (keys stay on the cluster)."""
    root = Path(__file__).resolve().parent.parent
    # job_env's RAY_API_SERVER_ADDRESS: Ray Train's own actors (PlacementGroupCleaner) query the
    # state API with no address; without it they scan the machine and fail beside another Ray.
    env = {**settings.job_env(), "PYTHONUNBUFFERED": "1",
           # Starting the worker group may take this long (a busy small machine needs over a
           # minute); the job retries it twice (see jobs.train), then fails with Ray's reason.
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(WORKER_START_TIMEOUT_S)}
    return {"py_modules": [str(root / p) for p in PACKAGES], "env_vars": env}


def submit(spec: TrainSpec, settings: Settings) -> dict:
    """Check the request (see `preflight`), create its MLflow run, submit the job.
    -> {"job_id", "run_id", "run_url", "plan": TrainPlan}. Raises Img2ImgError when refused."""
    # The options first (no service needed): a bad one is named even while the stack is down.
    manifest, plan = preflight(spec, settings)
    from jobs.train import check_resources

    check_resources(spec, cluster_resources(settings), settings.ray_address, serve_cpus(settings))
    client = job_client(settings)
    spec.run_id, url = start_run(spec, settings, manifest, plan)
    entrypoint = f"python -m jobs.train --spec {shlex.quote(spec.to_json())}"
    metadata = {"img2img": "train", "variant": spec.variant, "dataset": spec.dataset, "run_id": spec.run_id}
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(settings), metadata=metadata)
    except Exception as e:
        from mlflow.tracking import MlflowClient

        MlflowClient(settings.mlflow_uri).set_terminated(spec.run_id, status="FAILED")
        raise Img2ImgError(f"Ray refused the job: {str(e).splitlines()[0]}") from None
    return {"job_id": job_id, "run_id": spec.run_id, "run_url": url, "plan": plan}


def run_local(spec: TrainSpec, settings: Settings) -> dict:
    """--local: the same driver in this process, on a throwaway local Ray (for debugging)."""
    import ray

    from jobs.train import run

    manifest, plan = preflight(spec, settings)
    spec.run_id, url = start_run(spec, settings, manifest, plan)
    ray.init(address="local", num_cpus=max(2, int(spec.workers * spec.cpus_per_worker) + 1),
             include_dashboard=False, log_to_driver=True)
    try:
        version, metrics = run(spec, settings)
    finally:
        ray.shutdown()
    return {"job_id": None, "run_id": spec.run_id, "run_url": url, "version": version}


def _status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id)).split(".")[-1]


def wait(client, job_id: str, follow: bool, echo=None) -> str:
    """Wait for a job to end; follow=True streams its raw logs meanwhile (colour codes removed
    when not on a terminal). -> the terminal status."""
    import asyncio
    import time

    from jobs.progress import write_raw

    if follow:
        echo = echo or write_raw

        async def _tail():
            async for chunk in client.tail_job_logs(job_id):
                echo(chunk)

        asyncio.run(_tail())
    while (status := _status(client, job_id)) not in TERMINAL:
        time.sleep(1)
    return status


def outcome_error(job_id: str, status: str, message: str = "", logs_hint: bool = True) -> Img2ImgError | None:
    """None when a followed job SUCCEEDED, else the one-line error the CLI exits 1 with:
    `job ID FAILED: <the message's last line>; see `img2img jobs logs ID`` (STOPPED alike)."""
    if status == "SUCCEEDED":
        return None
    reason = f": {message.strip().splitlines()[-1][:300]}" if message and message.strip() else ""
    hint = f"; see `img2img jobs logs {job_id}`" if logs_hint else ""
    return Img2ImgError(f"job {job_id} {status}{reason}{hint}")


def follow_progress(client, settings: Settings, job_id: str, run_id: str, say=None, live: bool | None = None):
    """The live progress display of a job until it ends (see jobs.progress). -> last Snapshot."""
    from jobs.progress import follow, strip_ansi

    def job_status() -> tuple[str, str]:
        info = client.get_job_info(job_id)
        return str(info.status).split(".")[-1], strip_ansi(info.message or "")

    return follow(settings.mlflow_uri, run_id, job_status, say=say, live=live)


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def job_rows(client) -> list[list]:
    """[id, status, variant, dataset, started, duration] of every training job, newest first;
    a running job's duration is its elapsed time so far (`12s so far`)."""
    import time
    from datetime import datetime

    rows = []
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("img2img") == "train"]
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        start = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else ""
        if j.start_time and j.end_time:
            dur = _elapsed((j.end_time - j.start_time) / 1000)
        elif j.start_time:
            dur = f"{_elapsed(time.time() - j.start_time / 1000)} so far"
        else:
            dur = ""
        rows.append([j.submission_id, str(j.status).split(".")[-1], j.metadata.get("variant"),
                     j.metadata.get("dataset"), start, dur])
    return rows


def job_info(client, job_id: str) -> dict:
    try:
        info = client.get_job_info(job_id)
    except Exception:
        raise Img2ImgError(f"no job {job_id!r} on this cluster ; list them with: img2img jobs ls") from None
    from jobs.progress import strip_ansi

    # Ray's message on failure embeds 20,000 characters of coloured log: keep its last lines.
    lines = [ln for ln in strip_ansi(info.message or "").splitlines() if ln.strip()]
    message = lines[0] if len(lines) <= 1 else "\n".join([lines[0].split(",")[0] + ":", *lines[-3:]])
    return {"job_id": job_id, "status": str(info.status).split(".")[-1], "message": message,
            **(info.metadata or {})}


def job_summary(client, settings: Settings, job_id: str) -> dict:
    """job_info plus the progress line read from the job's MLflow run (when it has one)."""
    info = job_info(client, job_id)
    if info.get("run_id"):
        from jobs.progress import read

        try:
            snap = read(settings.mlflow_uri, info["run_id"], info["status"], info.get("message") or "")
            info["progress"] = snap.line()
            if snap.error:
                info["error"] = snap.error
            for k, v in snap.extra.items():
                info[k] = round(v, 2)
        except Exception:
            info["progress"] = "(MLflow run not readable)"
    return info


def stop(client, settings: Settings, job_id: str, wait_s: float = 30) -> str:
    """Stop a job. -> "stopped", or "already SUCCEEDED/FAILED/STOPPED" when it had ended.
    Its MLflow run ends KILLED (the driver marks it on SIGTERM; done here too in case the
    driver was killed before it could)."""

    info = job_info(client, job_id)
    if info["status"] in TERMINAL:
        return f"already {info['status']}"
    client.stop_job(job_id)
    poll_until(lambda: _status(client, job_id) in TERMINAL, wait_s)
    if info.get("run_id"):
        try:
            from mlflow.tracking import MlflowClient

            ml = MlflowClient(settings.mlflow_uri)
            if ml.get_run(info["run_id"]).info.status in ("RUNNING", "SCHEDULED"):
                ml.set_tag(info["run_id"], "stopped", "stopped by the user")
                ml.set_terminated(info["run_id"], status="KILLED")
        except Exception:
            pass
    return "stopped"


__all__ = ["submit", "run_local", "job_client", "wait", "follow_progress", "job_rows", "job_info", "job_summary",
           "stop"]
