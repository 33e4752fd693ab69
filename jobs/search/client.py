"""Submitting a hyper-parameter search: checked before anything is submitted, one cluster job
through the platform's admission reserving the whole search's footprint."""

from __future__ import annotations

import json
import logging
import shlex

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from cluster.admission import DATA_CPUS, Footprint, check_options
from cluster.errors import Img2ImgError
from cluster.services import require_mlflow
from cluster.settings import Settings
from jobs.search.space import combinations
from jobs.search.spec import SearchSpec
from jobs.training.client import admit, job_client, preflight, submit_job
from registry.tracking import TAG_PHASE, experiment_id

log = logging.getLogger(__name__)
TAG_SPEC = "search_spec"  # on the parent run: the search request (JSON), what --resume continues


def footprint(search: SearchSpec) -> Footprint:
    """What the search holds while it runs: `max_concurrent` trials, each `workers` x
    `cpus_per_worker` (and its GPUs) plus its own Ray Data CPU; one driver."""
    spec, k = search.train, search.max_concurrent
    return Footprint(workers=k * spec.workers, cpus_per_worker=spec.cpus_per_worker,
                     gpus_per_worker=1.0 if spec.use_gpu else 0.0, data_cpus=k * DATA_CPUS)


def check_trials_fit(search: SearchSpec, manifest) -> None:
    """Every combination of the space's candidates (`jobs.search.space.combinations`) against
    the dataset, as `img2img train` checks its request (`jobs.training.driver.check_fit`): crops
    the stored images allow, enough rows for a batch. Raises Img2ImgError naming the trial."""
    from jobs.training.driver import check_fit

    for combo in combinations(search.dims()):
        try:
            check_fit(search.trial_spec(combo), manifest)
        except Img2ImgError as e:
            values = ", ".join(f"{k}={v}" for k, v in combo.items())
            raise Img2ImgError(f"--search: the trial {values} cannot train on dataset {search.train.dataset!r}: "
                               f"{e}") from None


def start_search_run(search: SearchSpec, settings: Settings, manifest) -> tuple[str, str]:
    """The search's parent MLflow run (its id is the search id): the space, the scheduler, the
    trials' common options. -> (run id, its URL)."""
    require_mlflow(settings)
    spec = search.train
    client = MlflowClient(settings.mlflow_uri)
    exp_id = experiment_id(client, spec.experiment)
    run = client.create_run(exp_id, run_name=f"search-{spec.variant}-{spec.dataset}",
                            tags={"search": "true", "variant": spec.variant, "dataset": spec.dataset,
                                  TAG_PHASE: "submitted"})
    params = {"space": json.dumps(search.space), "scheduler": search.scheduler, "trials": search.trials,
              "max_concurrent": search.max_concurrent, "reduction_factor": search.reduction_factor,
              "grace_steps": search.grace_steps, "perturbation_interval": search.perturbation_interval,
              "search_time_budget_s": search.time_budget_s, "variant": spec.variant, "dataset": spec.dataset,
              "dataset_sha256": manifest.sha256, "workers_per_trial": spec.workers,
              "cpus_per_worker": spec.cpus_per_worker, "max_steps": spec.max_steps, "epochs": spec.epochs,
              "time_budget_s": spec.time_budget_s, "registered_model": spec.registered_name,
              **{f"set.{k}": v for k, v in spec.config.items()}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    run_id = run.info.run_id
    return run_id, f"{settings.mlflow_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def resumed(search: SearchSpec, settings: Settings) -> SearchSpec:
    """`--resume SEARCH_ID`: the search as first submitted (its parent run's `TAG_SPEC`), to be
    continued by Tune's restore. Raises Img2ImgError for an unknown id or a search that finished."""
    require_mlflow(settings)
    client = MlflowClient(settings.mlflow_uri)
    try:
        run = client.get_run(search.resume)
    except Exception:
        raise Img2ImgError(f"no search {search.resume!r} (its id is the search's MLflow run id, printed by "
                           "`img2img tune`)") from None
    text = run.data.tags.get(TAG_SPEC)
    if not text:
        raise Img2ImgError(f"run {search.resume} is not a search (no {TAG_SPEC} tag)")
    if run.info.status == "FINISHED":
        raise Img2ImgError(f"search {search.resume} has finished; nothing to resume")
    old = SearchSpec.from_json(text)
    old.resume, old.promote = search.resume, search.promote or old.promote
    return old


def submit(search: SearchSpec, settings: Settings, priority: str = "normal",
           queue_timeout_s: float | None = None) -> dict:
    """Check the search (options, space against the variant, dataset, that the whole footprint
    can ever fit), create its parent MLflow run and submit ONE job running the Tuner
    (`jobs.search.driver`), its whole footprint reserved (`jobs.training.client.submit_job`).
    -> {"job_id", "search_id", "run_url", "plan", "footprint"}. Raises Img2ImgError when refused."""
    check_options(priority, queue_timeout_s)
    if search.resume:
        search = resumed(search, settings)
    search.validate()
    spec = search.train
    manifest, plan = preflight(spec, settings)
    check_trials_fit(search, manifest)
    fp = footprint(search)
    admit(settings, fp)
    job_client(settings)
    if search.resume:
        search.run_id, url = search.resume, settings.mlflow_uri
        MlflowClient(settings.mlflow_uri).update_run(search.run_id, status="RUNNING")
    else:
        search.run_id, url = start_search_run(search, settings, manifest)
        MlflowClient(settings.mlflow_uri).set_tag(search.run_id, TAG_SPEC, search.to_json())
    entrypoint = f"python -m jobs.search.driver --spec {shlex.quote(search.to_json())}"
    metadata = {"img2img": "search", "variant": spec.variant, "dataset": spec.dataset, "run_id": search.run_id,
                "model": spec.registered_name}
    try:
        # each running trial keeps its own decoded copy of the split (jobs.data.stream): they share the budget
        trials = settings.model_copy(update={"decode_cache_share": settings.decode_cache_share
                                             / max(1, search.max_concurrent)})
        job_id = submit_job(trials, entrypoint=entrypoint, metadata=metadata, footprint=fp, priority=priority,
                            queue_timeout_s=queue_timeout_s)
    except Img2ImgError:
        MlflowClient(settings.mlflow_uri).set_terminated(search.run_id, status="FAILED")
        raise
    return {"job_id": job_id, "search_id": search.run_id, "run_url": url, "plan": plan, "footprint": fp,
            "search": search}
