"""Submitting training jobs to the Ray cluster through the Jobs API, and managing them."""

from __future__ import annotations

import shlex
import subprocess
import urllib.request
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.spec import TrainSpec

PACKAGES = ("cluster", "jobs", "translator", "serving")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _reachable(url: str, headers: dict | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except Exception:
        return False


def require_mlflow(settings: Settings) -> None:
    if not _reachable(settings.mlflow_uri.rstrip("/") + "/health"):
        raise Img2ImgError(f"cannot reach MLflow at {settings.mlflow_uri}; is it running? (`img2img stack up`)")


def job_client(settings: Settings):
    """A JobSubmissionClient for the configured cluster, with Ray's auth token found for you."""
    settings.apply_ray_env()
    if not _reachable(settings.ray_address.rstrip("/") + "/api/version", settings.ray_auth_headers()):
        raise Img2ImgError(f"cannot reach the Ray Jobs API at {settings.ray_address}; is it running? "
                           "(`img2img stack up`)")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(settings.ray_address)
    except Exception as e:
        raise Img2ImgError(f"Ray at {settings.ray_address} refused the connection: {str(e).splitlines()[0]}") from None


def cluster_resources(settings: Settings) -> dict[str, float]:
    """Total resources of the cluster's live nodes, from the dashboard."""
    import httpx

    try:
        r = httpx.get(settings.ray_address.rstrip("/") + "/nodes", params={"view": "summary"},
                      headers=settings.ray_auth_headers(), timeout=10)
        nodes = r.json()["data"]["summary"]
    except Exception:
        return {}
    total: dict[str, float] = {}
    for node in nodes:
        raylet = node.get("raylet") or {}
        if raylet.get("state") == "ALIVE":
            for k, v in (raylet.get("resourcesTotal") or {}).items():
                total[k] = total.get(k, 0.0) + float(v)
    return total


def code_version() -> str:
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:
        sha = ""
    return f"{version('img2img-platform')}" + (f"+{sha}" if sha else "")


def preflight(spec: TrainSpec, settings: Settings):
    """Everything that can be refused before anything is submitted."""
    from jobs.train import check_dataset

    if spec.init_from:  # before validate(): the parent's config fills what the user left unset
        from jobs.finetune import resolve_init

        resolve_init(spec, settings)
    spec.validate()
    return check_dataset(spec, Storage(settings))


def start_run(spec: TrainSpec, settings: Settings, manifest) -> tuple[str, str]:
    """Create the MLflow run up front (so its URL can be shown now) and log the params."""
    import mlflow
    from mlflow.tracking import MlflowClient

    require_mlflow(settings)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(spec.experiment)
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

    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    url = f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    return run.info.run_id, url


def runtime_env(settings: Settings) -> dict:
    """Our code travels with the job; only non-secret settings do (keys stay on the cluster)."""
    root = Path(__file__).resolve().parent.parent
    env = {"IMG2IMG_S3_ENDPOINT": settings.s3_endpoint, "IMG2IMG_S3_SECURE": str(settings.s3_secure).lower(),
           "IMG2IMG_BUCKET": settings.bucket, "IMG2IMG_MLFLOW_URI": settings.mlflow_uri,
           "PYTHONUNBUFFERED": "1"}
    return {"py_modules": [str(root / p) for p in PACKAGES], "env_vars": env}


def submit(spec: TrainSpec, settings: Settings) -> dict:
    manifest = preflight(spec, settings)
    client = job_client(settings)
    resources = cluster_resources(settings)
    if spec.use_gpu and resources and resources.get("GPU", 0) < spec.workers:
        raise Img2ImgError(f"--gpu asks for {spec.workers} GPU worker(s) but the cluster at {settings.ray_address} "
                           f"has {int(resources.get('GPU', 0))} GPU(s); use --cpu or add GPU nodes")
    spec.run_id, url = start_run(spec, settings, manifest)
    entrypoint = f"python -m jobs.train --spec {shlex.quote(spec.to_json())}"
    metadata = {"img2img": "train", "variant": spec.variant, "dataset": spec.dataset, "run_id": spec.run_id}
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(settings), metadata=metadata)
    except Exception as e:
        from mlflow.tracking import MlflowClient

        MlflowClient(settings.mlflow_uri).set_terminated(spec.run_id, status="FAILED")
        raise Img2ImgError(f"Ray refused the job: {str(e).splitlines()[0]}") from None
    return {"job_id": job_id, "run_id": spec.run_id, "run_url": url}


def run_local(spec: TrainSpec, settings: Settings) -> dict:
    """--local: the same driver in this process, on a throwaway local Ray (for debugging)."""
    import ray

    from jobs.train import run

    manifest = preflight(spec, settings)
    spec.run_id, url = start_run(spec, settings, manifest)
    ray.init(address="local", num_cpus=max(2, int(spec.workers * spec.cpus_per_worker) + 1),
             include_dashboard=False, log_to_driver=True)
    try:
        version, metrics = run(spec, settings)
    finally:
        ray.shutdown()
    return {"job_id": None, "run_id": spec.run_id, "run_url": url, "version": version}


def wait(client, job_id: str, follow: bool, echo=print) -> str:
    import asyncio
    import time

    if follow:
        async def _tail():
            async for chunk in client.tail_job_logs(job_id):
                echo(chunk, end="")

        asyncio.run(_tail())
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(1)
    return status


def job_rows(client) -> list[list]:
    from datetime import datetime

    rows = []
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("img2img") == "train"]
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        start = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else ""
        dur = f"{((j.end_time or 0) - j.start_time) / 1000:.0f}s" if j.start_time and j.end_time else ""
        rows.append([j.submission_id, str(j.status).split(".")[-1], j.metadata.get("variant"),
                     j.metadata.get("dataset"), start, dur])
    return rows


def job_info(client, job_id: str) -> dict:
    try:
        info = client.get_job_info(job_id)
    except Exception:
        raise Img2ImgError(f"no job {job_id!r} on this cluster; list them with: img2img jobs ls") from None
    return {"job_id": job_id, "status": str(info.status).split(".")[-1], "message": info.message,
            **(info.metadata or {})}


__all__ = ["submit", "run_local", "job_client", "wait", "job_rows", "job_info"]
