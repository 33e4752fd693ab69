"""Client side of `img2img pipeline`: check a pipeline against the services, submit it as ONE Ray
job through the admission, and show, follow and stop pipeline runs.

The pipeline's own job reserves almost nothing (`PIPELINE_FOOTPRINT`: no workers, no data CPUs,
a quarter of a CPU for its driver), because each of its steps is a job of its own that queues
like any other; a step that could never fit beside the pipeline's reservation on the largest
node would wait forever, so it is refused here, before anything runs, with the numbers.
"""

from __future__ import annotations

import shlex
import time

from cluster import admission
from cluster.admission import Footprint, capacity
from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.data.sources import scan_source
from jobs.evaluation.client import footprint as eval_footprint
from jobs.training.client import admit, code_version, job_client, package_dir, runtime_env
from jobs.training.finetune import resolve_init
from pipelines import record
from pipelines.spec import PipelineSpec, check_force
from pipelines.steps import ingest_options, train_spec
from registry.manifest import manifest_key

PIPELINE_CPUS = 0.25
PIPELINE_FOOTPRINT = Footprint(0, 0.0, data_cpus=0.0, driver_cpus=PIPELINE_CPUS)


def _at(spec: PipelineSpec, field: str) -> str:
    return spec.where(field)


def check(spec: PipelineSpec, settings: Settings) -> None:
    """What the file can get wrong that needs the services: the source, the datasets, the train
    and ingest options (the library's own checks). Raises Img2ImgError naming the line/field."""
    store = Storage(settings)
    if "ingest" in spec.steps:
        try:
            ingest_options(spec).validate()
        except Exception as e:
            raise Img2ImgError(f"{_at(spec, 'ingest')}: {str(e).splitlines()[0]}") from None
        try:
            scan_source(spec.source, settings)
        except Img2ImgError as e:
            raise Img2ImgError(f"{_at(spec, 'source')}: {e}") from None
    elif not store.exists(manifest_key(spec.dataset)):
        raise Img2ImgError(f"{_at(spec, 'dataset')}: dataset {spec.dataset!r} does not exist and no source is given "
                           "to ingest it (see `img2img data ls`)")
    made = spec.dataset if "ingest" in spec.steps else None
    if spec.evaluate.dataset and spec.evaluate.dataset != made and not store.exists(
            manifest_key(spec.evaluate.dataset)):
        raise Img2ImgError(f"{_at(spec, 'evaluate.dataset')}: dataset {spec.evaluate.dataset!r} does not exist "
                           "(see `img2img data ls`)")
    if "train" in spec.steps:
        train = train_spec(spec, spec.train.init_from or "")
        if train.init_from:  # the parent's variant and config, as `train --init-from` adopts them
            try:
                resolve_init(train, settings)
            except Img2ImgError as e:
                raise Img2ImgError(f"{_at(spec, 'train.init_from')}: {e}") from None
        try:
            train.validate()
        except Img2ImgError as e:
            raise Img2ImgError(f"{_at(spec, 'train')}: {e}") from None


def check_nested(spec: PipelineSpec, cap: admission.Capacity | None, extra: float = 0.0) -> None:
    """Refuse a pipeline whose step jobs could never be admitted beside the pipeline's own
    reservation (`PIPELINE_CPUS`, plus `extra`: a schedule's) on the cluster's largest node (a
    train step bigger than that node splits its reservation over nodes: it must fit the whole
    cluster, each worker and its data and driver share one node): it would wait forever."""
    if cap is None:
        return
    steps = []
    if "train" in spec.steps:
        t = spec.train
        steps.append(("train", Footprint(t.workers, t.cpus_per_worker, 0.0)))
    if {"evaluate", "gate", "promote"} & set(spec.steps):
        e = spec.evaluate
        steps.append(("evaluate", eval_footprint(e.workers, e.cpus_per_worker, False)))
    held = PIPELINE_CPUS + extra
    for name, fp in steps:
        if name == "train" and fp.cpus > cap.largest:  # split over nodes (admission.worker_reservation)
            if fp.cpus + held > cap.total or max(fp.cpus_per_worker, fp.data_cpus + fp.driver_cpus + held) > cap.largest:
                raise Img2ImgError(
                    f"the train step needs {fp.describe()} across the cluster's nodes (each worker on one node), and "
                    f"the pipeline's own job{' and its schedule hold' if extra else ' holds'} {held:g} beside it: "
                    f"{fp.cpus + held:g} CPUs, but the cluster has {cap.total:g} CPUs and its largest node "
                    f"{cap.largest:g}; give the step fewer workers or a smaller cpus_per_worker")
            continue
        if fp.cpus + held > cap.largest:
            raise Img2ImgError(
                f"the {name} step needs {fp.describe()} reserved on one node, and the pipeline's own job"
                f"{' and its schedule hold' if extra else ' holds'} {held:g} beside it: {fp.cpus + held:g} CPUs, but the "
                f"largest node of the cluster has {cap.largest:g}; give the step fewer workers or a smaller "
                "cpus_per_worker")


def pipeline_env(settings: Settings) -> dict:
    """The step jobs' runtime environment plus this package, and what the driver needs to reach
    the Jobs API and the endpoint (no secrets: the keys stay on the cluster)."""
    env = runtime_env(settings)
    env["py_modules"] = [*env["py_modules"], str(package_dir("pipelines"))]
    env["env_vars"] = {**env["env_vars"], "IMG2IMG_RAY_ADDRESS": settings.ray_address,
                       "IMG2IMG_SERVE_URL": settings.serve_url, **settings.ray_env()}
    return env


def submit(spec: PipelineSpec, settings: Settings, force: str | None = None, priority: str = "normal",
           queue_timeout_s: float | None = None, code: str | None = None) -> dict:
    """Check `spec` (`check`, `check_nested`) and submit it as one Ray job through the admission
    -> {"id": the Ray job id (the pipeline's id), "run_id": its MLflow run}. `force`: re-run from
    this step (of STEPS) whatever the cache holds; `code`: the code version of the cache keys (default:
    this checkout's, `jobs.training.client.code_version`). Raises Img2ImgError when refused."""
    check_force(force)
    admission.check_options(priority, queue_timeout_s)
    check(spec, settings)
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    check_nested(spec, cap)
    admit(settings, PIPELINE_FOOTPRINT)
    spec.code_version = code or code_version()
    client = job_client(settings)
    run_id = record.start_pipeline(settings.mlflow_uri, spec.title, spec.to_json(), "")
    entrypoint = (f"python -m pipelines.driver --spec {shlex.quote(spec.to_json())} --run-id {run_id}"
                  + (f" --force {force}" if force else ""))
    metadata = {"img2img": "pipeline", "model": spec.model_name, "dataset": spec.dataset, "pipeline_run": run_id}
    try:
        job_id = admission.submit(client, entrypoint=entrypoint, runtime_env=pipeline_env(settings),
                                  metadata=metadata, footprint=PIPELINE_FOOTPRINT, priority=priority,
                                  queue_timeout_s=queue_timeout_s, cap=cap)
    except Img2ImgError as e:
        record.end_pipeline(settings.mlflow_uri, run_id, "FAILED", error=str(e))
        raise
    record.set_tags(settings.mlflow_uri, run_id, {record.JOB: job_id})
    return {"id": job_id, "run_id": run_id}


def _job_status(settings: Settings, job_id: str) -> str:
    try:
        return str(job_client(settings).get_job_status(job_id)).split(".")[-1]
    except Exception:
        return ""


def view(settings: Settings, job_id: str | None = None) -> record.PipelineView:
    """A pipeline run as recorded, with its Ray job's state where the record has not ended: a
    driver that died (killed node, OOM) shows FAILED, a queued one QUEUED."""
    v = record.pipeline(settings.mlflow_uri, job_id)
    if v.state == "RUNNING" and v.job_id:
        ray = _job_status(settings, v.job_id)
        if ray == "PENDING":
            v.state = "QUEUED"
        elif ray in ("FAILED", "STOPPED"):
            v.state = "FAILED" if ray == "FAILED" else "KILLED"
            v.error = v.error or f"the pipeline's job {v.job_id} ended {ray}; see `img2img jobs logs {v.job_id}`"
    return v


def follow(settings: Settings, job_id: str, on_change, interval_s: float = 2.0) -> record.PipelineView:
    """Call `on_change(view)` whenever the run's steps or state change, until it ends."""
    seen = None
    while True:
        v = view(settings, job_id)
        shape = (v.state, [(s.step, s.state) for s in v.steps])
        if shape != seen:
            on_change(v)
            seen = shape
        if v.state not in ("RUNNING", "QUEUED"):
            return v
        time.sleep(interval_s)


def stop(settings: Settings, job_id: str) -> str:
    """Stop a pipeline run and the step job it is running -> what happened ("stopped",
    "cancelled" while queued, "already FINISHED"...). Its MLflow run and the running step's end
    KILLED / failed ("stopped by the user")."""
    from jobs.manage import stop as stop_job

    v = view(settings, job_id)
    if v.state not in ("RUNNING", "QUEUED"):
        return f"already {v.state}"
    client = job_client(settings)
    said = stop_job(client, settings, v.job_id)  # the driver stops its step on SIGTERM, if Ray lets it
    uri, why = settings.mlflow_uri, "stopped by the user"
    for s in record.pipeline(uri, v.job_id).steps:
        if s.state == record.RUNNING:
            if s.job_id:
                stop_job(client, settings, s.job_id)
            run = next(r for r in record.step_runs(uri, v.run_id) if r[0] == s.step)[1]
            record.end_step(uri, run, record.FAILED, error="stopped by the user")
            why = f"{s.step}: stopped by the user"
    if record.pipeline(uri, v.job_id).state == "RUNNING":
        record.end_pipeline(uri, v.run_id, "KILLED", error=why)
    return said
