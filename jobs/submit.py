"""Submitting training jobs to the Ray cluster through the Jobs API, and managing them."""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from cluster import admission
from cluster.admission import Footprint, capacity, check_fits, check_options
from cluster.errors import Img2ImgError
from cluster.services import cluster_resources, poll_until, require, require_mlflow  # noqa: F401  (re-exported)
from cluster.settings import Settings
from jobs.spec import TrainSpec

log = logging.getLogger(__name__)
PACKAGES = ("cluster", "jobs", "translator", "serving")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
WORKER_START_TIMEOUT_S = 120


def job_client(settings: Settings):
    """A JobSubmissionClient for the configured cluster, with Ray's auth token found for you."""
    import logging

    settings.apply_ray_env()
    for chatty in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",  # upload, websocket
                   "ray._private.runtime_env.packaging"):  # "Creating a file package for local module"
        logging.getLogger(chatty).setLevel(logging.WARNING)
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


def admit(settings: Settings, footprint: Footprint):
    """The one capacity check before any cluster job is submitted: refuse a `footprint` that
    could never start here (see `cluster.admission.check_fits`). -> the cluster's admission
    Capacity (None when its nodes advertise none)."""
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    check_fits(footprint, cluster_resources(settings), settings.ray_address, serve_cpus(settings),
               cap.largest if cap else None)
    return cap


def submit_job(settings: Settings, *, entrypoint: str, metadata: dict, footprint: Footprint,
               priority: str = "normal", queue_timeout_s: float | None = None) -> str:
    """Every cluster job (training, evaluation, the gate's evaluation, batch, search) is
    submitted here: checked by `admit`, then handed to Ray Jobs with its whole footprint
    reserved, so it waits QUEUED (Ray: PENDING) until it fits. -> the Ray submission id."""
    check_options(priority, queue_timeout_s)
    cap = admit(settings, footprint)
    return admission.submit(job_client(settings), entrypoint=entrypoint, runtime_env=runtime_env(settings),
                            metadata=metadata, footprint=footprint, priority=priority,
                            queue_timeout_s=queue_timeout_s, cap=cap)


def submit(spec: TrainSpec, settings: Settings, priority: str = "normal", queue_timeout_s: float | None = None) -> dict:
    """Check the request (see `preflight`, `admit`), create its MLflow run, submit the job with
    its footprint reserved (`submit_job`).
    -> {"job_id", "run_id", "run_url", "plan": TrainPlan}. Raises Img2ImgError when refused."""
    # The options first (no service needed): a bad one is named even while the stack is down.
    check_options(priority, queue_timeout_s)
    manifest, plan = preflight(spec, settings)
    footprint = Footprint(spec.workers, spec.cpus_per_worker, 1.0 if spec.use_gpu else 0.0)
    admit(settings, footprint)
    job_client(settings)
    spec.run_id, url = start_run(spec, settings, manifest, plan)
    entrypoint = f"python -m jobs.train --spec {shlex.quote(spec.to_json())}"
    metadata = {"img2img": "train", "variant": spec.variant, "dataset": spec.dataset, "run_id": spec.run_id,
                "model": spec.registered_name}
    try:
        job_id = submit_job(settings, entrypoint=entrypoint, metadata=metadata, footprint=footprint,
                            priority=priority, queue_timeout_s=queue_timeout_s)
    except Img2ImgError:
        from mlflow.tracking import MlflowClient

        MlflowClient(settings.mlflow_uri).set_terminated(spec.run_id, status="FAILED")
        raise
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

    echo = echo or write_raw

    async def _tail(jid: str):
        async for chunk in client.tail_job_logs(jid):
            echo(chunk)

    while True:
        if follow:
            asyncio.run(_tail(job_id))
        while (status := _status(client, job_id)) not in TERMINAL:
            time.sleep(1)
        nxt = admission.current_id(client, job_id) if status == "STOPPED" else job_id
        if nxt == job_id:
            return status
        job_id = nxt  # handed back to Ray behind a higher priority: go on with its new id


def outcome_error(job_id: str, status: str, message: str = "", logs_hint: bool = True) -> Img2ImgError | None:
    """None when a followed job SUCCEEDED, else the one-line error the CLI exits 1 with:
    `job ID FAILED: <the message's last line>; see `img2img jobs logs ID`` (STOPPED alike)."""
    if status == "SUCCEEDED":
        return None
    reason = f": {message.strip().splitlines()[-1][:300]}" if message and message.strip() else ""
    hint = f"; see `img2img jobs logs {job_id}`" if logs_hint else ""
    return Img2ImgError(f"job {job_id} {status}{reason}{hint}")


def follow_progress(client, settings: Settings, job_id: str, run_id: str, say=None, live: bool | None = None):
    """The live progress display of a job until it ends (see jobs.progress); while it waits in
    the queue, its place and what it waits for. -> last Snapshot."""
    from jobs.progress import follow, strip_ansi

    current = [job_id]

    def job_status() -> tuple[str, str]:
        info = client.get_job_info(current[0])
        status = str(info.status).split(".")[-1]
        if status == "STOPPED":  # handed back to Ray behind a higher priority: go on with its new id
            nxt = admission.current_id(client, current[0])
            if nxt != current[0]:
                current[0] = nxt
                return job_status()
        if status == "PENDING":
            return "QUEUED", queue_line(client, settings, current[0])
        return status, strip_ansi(info.message or "")

    return follow(settings.mlflow_uri, run_id, job_status, say=say, live=live)


def queue_entries(client, settings: Settings) -> dict[str, admission.QueueEntry]:
    """{Ray id: QueueEntry} of the jobs waiting in the queue (stopped ones left out)."""
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    return {e.job_id: e for e in admission.queue_view(client, cap, cancelled=_cancelled(client, settings))}


def queue_line(client, settings: Settings, job_id: str) -> str:
    """`position 2 of 3, waiting 1m05s: needs 3 CPUs, 1 free; behind raysubmit_...`."""
    entries = queue_entries(client, settings)
    e = entries.get(job_id)
    if e is None:
        return "waiting for Ray to start it"
    return f"position {e.position} of {len(entries)}, waiting {_elapsed(e.waited_s)}: {e.waiting_for()}"


def _cancelled(client, settings: Settings) -> set[str]:
    """Queued jobs stopped by the user (their MLflow run already KILLED); Ray ends each when its
    turn comes, without starting it."""
    out = set()
    try:
        from mlflow.tracking import MlflowClient

        ml = MlflowClient(settings.mlflow_uri)
        for job, _ in admission.queued(client):
            run_id = (job.metadata or {}).get("run_id")
            if run_id and ml.get_run(run_id).info.status == "KILLED":
                out.add(job.submission_id)
    except Exception:
        pass
    return out


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def job_rows(client, settings: Settings | None = None) -> list[list]:
    """[id, status, model, variant, dataset, started, duration] of every training and evaluation
    job, newest first. A queued job's status is `QUEUED #N` (its place) and its duration says
    how long it has waited and for what (`waiting 1m05s: needs 3 CPUs, 1 free; behind ...`); a
    running job's duration is its elapsed time so far (`12s so far`)."""
    import time
    from datetime import datetime

    rows = []
    every = client.list_jobs()
    replaced = admission.replaced(every)  # handed back to Ray behind a higher priority: their copy is listed
    jobs = [j for j in every if (j.metadata or {}).get("img2img") in ("train", "eval")
            and j.submission_id not in replaced]
    entries = queue_entries(client, settings) if settings is not None else {}
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        meta = j.metadata or {}
        status = str(j.status).split(".")[-1]
        start = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else ""
        if status == "PENDING" and j.submission_id in entries:
            e = entries[j.submission_id]
            status, dur = f"QUEUED #{e.position}", f"waiting {_elapsed(e.waited_s)}: {e.waiting_for()}"
        elif status == "PENDING":
            status, dur = "STOPPING", "stopped while queued"
        elif j.start_time and j.end_time:
            dur = _elapsed((j.end_time - j.start_time) / 1000)
        elif j.start_time:
            dur = f"{_elapsed(time.time() - j.start_time / 1000)} so far"
        else:
            dur = ""
        model = meta.get("model") or ""
        kind = "" if meta.get("img2img") == "train" else f"{meta.get('img2img')} "
        rows.append([j.submission_id, status, f"{kind}{model}".strip(), meta.get("variant", ""),
                     meta.get("dataset"), start, dur])
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
    """job_info plus the progress line read from the job's MLflow run (when it has one), and its
    place in the queue while it waits."""
    info = job_info(client, admission.current_id(client, job_id))
    if info["status"] == "PENDING":
        info["queue"] = queue_line(client, settings, info["job_id"])
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
    """Stop a job. -> "stopped" (its processes are gone and its CPUs free when this returns,
    within `wait_s` seconds), "cancelled" (it was queued: Ray ends it when its turn comes,
    without starting it), or "already SUCCEEDED/FAILED/STOPPED" when it had ended. Its MLflow
    run ends KILLED (the driver marks it on SIGTERM; done here too in case it could not)."""
    job_id = admission.current_id(client, job_id)
    info = job_info(client, job_id)
    if info["status"] in TERMINAL:
        return f"already {info['status']}"
    queued = info["status"] == "PENDING"
    if queued and info.get("run_id"):
        _mark_killed(settings, info["run_id"])  # first: the driver leaves a run it finds KILLED alone
    client.stop_job(job_id)
    if not queued:
        poll_until(lambda: _status(client, job_id) in TERMINAL, wait_s)
        ray_job = getattr(client.get_job_info(job_id), "job_id", None)
        if ray_job:
            poll_until(lambda: not _live_actors(settings, ray_job), wait_s, interval_s=1)
    if info.get("run_id"):
        _mark_killed(settings, info["run_id"])
    return "cancelled" if queued else "stopped"


def _mark_killed(settings: Settings, run_id: str) -> None:
    try:
        from mlflow.tracking import MlflowClient

        from jobs.tracking import TAG_PHASE

        ml = MlflowClient(settings.mlflow_uri)
        if ml.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
            ml.set_tag(run_id, "stopped", "stopped by the user")
            ml.set_tag(run_id, TAG_PHASE, "stopped")
            ml.set_terminated(run_id, status="KILLED")
    except Exception:
        log.warning("could not mark MLflow run %s KILLED", run_id)


def _live_actors(settings: Settings, ray_job_id: str) -> list[dict]:
    """The job's actors still alive that hold CPUs or GPUs (its Train workers, Scorers), from
    Ray's state API. Ray Data's detached bookkeeping actors (`_StatsActor`, 0 CPUs) outlive
    every job by design and are left out."""
    import httpx

    try:
        r = httpx.get(settings.ray_address.rstrip("/") + "/api/v0/actors",
                      params={"limit": 1000, "detail": "true", "filter_keys": ["job_id", "state"],
                              "filter_predicates": ["=", "="], "filter_values": [ray_job_id, "ALIVE"]},
                      headers=settings.ray_auth_headers(), timeout=10)
        actors = ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    except Exception:
        return []
    return [a for a in actors if any(v > 0 for k, v in (a.get("required_resources") or {}).items()
                                     if "CPU" in k or "GPU" in k)]


__all__ = ["submit", "submit_job", "admit", "run_local", "job_client", "wait", "follow_progress", "job_rows", "job_info", "job_summary",
           "stop"]
