"""The Ray job driver of a hyper-parameter search: `python -m jobs.search.driver --spec JSON`
(what `img2img tune` submits).

A Ray Tune `Tuner` whose trials are real training runs of the platform: each trial builds its
TorchTrainer with `jobs.training.driver.build_trainer` (the same data streaming, cadence,
checkpoints and validation as `img2img train`), in its own MLflow child run, and hands every
`ray.train.report` (val PSNR at the cadence) to Tune through `TuneReportCallback`, so ASHA can
stop the trials that fall behind (Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning"). At the end the best trial's best checkpoint is registered
(`jobs.training.driver.register`) and tagged with the search run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cluster.admission import check_deadline
from cluster.errors import Img2ImgError
from cluster.services import driver_args
from cluster.settings import Settings, get_settings
from cluster.storage import arrow_errors, arrow_filesystem
from jobs.search import pbt
from jobs.search.plot import series, trials_png
from jobs.search.space import trial_overrides
from jobs.search.spec import METRIC, SearchSpec
from jobs.search.trials import (
    PARENT_TAG,
    TAG_COUNTED_STEP,
    TAG_OUTCOME,
    TAG_TRIAL,
    TrialTable,
    outcome,
    ranked,
    run_status,
)
from jobs.training import driver as training
from jobs.training import stopping
from jobs.training.client import start_run
from registry.tracking import TAG_PHASE

log = logging.getLogger("img2img.search")
TRIAL_CPUS = 0.01
STATE_SAVE_S = 5
TAG_SEARCH = "search_run_id"  # on the registered version and on every child run: the search's parent run
TAG_CLONED_FROM = "search_cloned_from"  # on a PBT trial's run started from a checkpoint: that checkpoint's trial


def searches_path(settings: Settings, search_id: str) -> str:
    """Where Tune keeps the search's experiment state in the store (`Tuner.restore` reads it)."""
    return f"{settings.bucket}/searches/{search_id}"


def run_trial(config: dict, search_json: str) -> None:
    """One Tune trial: a training run of the platform with the trial's values as `--set`
    overrides, in its own MLflow child run of the search (tagged with its Tune trial id)."""
    search = SearchSpec.from_json(search_json)
    settings = get_settings()
    overrides = trial_overrides(config, search.dims())
    spec = search.trial_spec(overrides)
    job = training.plan_job(spec, settings)
    origin = pbt.restored_from() if search.scheduler == "pbt" else None
    if origin:  # PBT: a clone of another trial's latest checkpoint (or, resumed, this trial's own)
        job.resume_from = origin["checkpoint"]
    trial_id = tune.get_context().get_trial_id()
    end_earlier_starts(settings, search.run_id, trial_id, origin)
    tags = {PARENT_TAG: search.run_id, TAG_TRIAL: trial_id, TAG_SEARCH: search.run_id}
    if origin:
        tags.update({"search_start_step": str(origin.get("step")), "resumed_from_checkpoint": origin["checkpoint"]})
        if origin["trial"] != trial_id:
            tags[TAG_CLONED_FROM] = origin["trial"]
    spec.run_id, _ = start_run(spec, settings, job.manifest, job.plan, tags=tags)
    client = MlflowClient(settings.mlflow_uri)
    client.log_param(spec.run_id, "search_values", json.dumps(overrides))
    try:
        with arrow_errors(settings):
            if search.scheduler == "pbt":
                pbt.fit_reporting_checkpoints(lambda cbs: training.build_trainer(spec, settings, job, callbacks=cbs),
                                              trial_id, spec.run_id)
            else:
                training.build_trainer(spec, settings, job, callbacks=[TuneReportCallback()]).fit()
    except Exception as e:
        client.set_tag(spec.run_id, TAG_OUTCOME, "failed")
        client.set_terminated(spec.run_id, status="FAILED")
        raise Img2ImgError(f"trial {trial_id} failed: {training._root_cause(e)}") from None
    client.set_tag(spec.run_id, TAG_PHASE, "done")
    client.set_terminated(spec.run_id, status="FINISHED")


def end_earlier_starts(settings: Settings, search_id: str, trial_id: str, origin: dict | None) -> None:
    """A trial starting again (PBT replaced it by a clone; `--resume` restarted it) ends its
    earlier child run, left RUNNING when Tune stopped it, KILLED with why."""
    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_run(search_id).info.experiment_id
    why = (f"perturbed (PBT continued it from trial {origin['trial']}'s checkpoint at step {origin.get('step')})"
           if origin and origin["trial"] != trial_id else "interrupted (the trial started again)")
    for run in client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{search_id}' and "
                                  f"tags.`{TAG_TRIAL}` = '{trial_id}' and attributes.status = 'RUNNING'"):
        client.set_tag(run.info.run_id, TAG_OUTCOME, why)
        client.set_terminated(run.info.run_id, status="KILLED")


def child_runs(settings: Settings, search_id: str, latest: bool = True):
    """{Tune trial id: MLflow run id} of the search's child runs (a trial started again by
    `--resume` has a run per start: the latest counts); with `latest=False`, every child run id."""
    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_run(search_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{search_id}'", max_results=1000,
                              order_by=["attributes.start_time ASC"])
    if not latest:
        return [r.info.run_id for r in runs]
    return {r.data.tags.get(TAG_TRIAL): r.info.run_id for r in runs if r.data.tags.get(TAG_TRIAL)}


def best_row(result) -> dict | None:
    """A trial's report with the highest finite val PSNR that has a checkpoint, from Tune's
    Result (its metrics_dataframe), as {metric: value} (NaN columns dropped); None if none."""
    df = result.metrics_dataframe
    if df is None or METRIC not in df or "checkpoint_path" not in df:
        return None
    df = df[df["checkpoint_path"].notna() & df[METRIC].notna()]
    if df.empty:
        return None
    row = df.loc[df[METRIC].idxmax()].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
            if not (isinstance(v, float) and math.isnan(v))}


def summarise(search: SearchSpec, settings: Settings, grid, total_steps: int) -> list[dict]:
    """One row per trial from Tune's ResultGrid, best first: {"trial", "run_id", "params",
    "status", "step", "best_val_psnr", "best": its best report (None without one)}; marks each
    child run with its outcome (stopped early: KILLED)."""
    runs = child_runs(settings, search.run_id)
    client = MlflowClient(settings.mlflow_uri)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or os.path.basename(str(result.path)).split("_")[1]
        best = best_row(result)
        step = int(metrics.get("step", 0) or 0)  # the last step Tune counted
        status = outcome(step, total_steps, result.error is not None)
        run_id = runs.get(trial_id)
        rows.append({"trial": trial_id, "run_id": run_id, "params": trial_overrides(result.config or {}, search.dims()),
                     "status": status, "step": step,
                     "best_val_psnr": best[METRIC] if best else None, "best": best,
                     **({"error": training._root_cause(result.error)} if result.error is not None else {})})
        if run_id:
            client.set_tag(run_id, TAG_OUTCOME, status)
            client.set_tag(run_id, TAG_COUNTED_STEP, str(step))
            if final := run_status(client.get_run(run_id).info.status, status):
                client.set_terminated(run_id, status=final)
    counted = {r["run_id"] for r in rows}
    for run_id in set(child_runs(settings, search.run_id, latest=False)) - counted:  # starts cut off by a stop
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, TAG_OUTCOME, "interrupted (the search was resumed)")
            client.set_terminated(run_id, status="KILLED")
    return ranked(rows)


def register_best(search: SearchSpec, settings: Settings, row: dict, grid_result, fit_s: float, started: float):
    """Register the best trial's best checkpoint as a version of the model, logged to its child
    run (`jobs.training.driver.register`), tagged with the search run. -> (version, metrics)."""
    best = row["best"]
    run_id, params = row["run_id"], row["params"]
    # PBT: the best report may come from an earlier start of the trial, in a run of its own
    # (its checkpoints are under checkpoints/RUN/), with the values it had then.
    parts = best["checkpoint_path"].split("/")
    if len(parts) > 3 and parts[1] == "checkpoints" and parts[2] != run_id:
        run_id = parts[2]
        params = json.loads(MlflowClient(settings.mlflow_uri).get_run(run_id).data.params.get("search_values") or "{}")
    spec = search.trial_spec(params, run_id=run_id)
    job = training.plan_job(spec, settings)
    checkpoint = Checkpoint(path=best["checkpoint_path"], filesystem=arrow_filesystem(settings))
    result = SimpleNamespace(best_checkpoints=[(checkpoint, best)], metrics=grid_result.metrics or {})
    version, metrics = training.register(spec, settings, job, result, fit_s, started)
    if row["status"] != "finished":  # registering ended its run FINISHED; it was stopped (by ASHA, PBT or the budget)
        MlflowClient(settings.mlflow_uri).set_terminated(run_id, status="KILLED")
    if version is not None:
        MlflowClient(settings.mlflow_uri).set_model_version_tag(spec.registered_name, str(version), TAG_SEARCH,
                                                                search.run_id)
    return version, metrics


def make_tuner(search: SearchSpec, settings: Settings, total_steps: int, grace: int):
    """The Tuner (a new one, or `--resume`: Tune's own restore of the experiment in the store)."""
    fs = arrow_filesystem(settings)
    # Tune saves the experiment's state (what --resume restores) at most this often; its "auto"
    # period grows to 19x a save's duration, which could lose a finished trial to a stop.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_SAVE_S))
    # The trial itself only waits on its TorchTrainer (whose workers hold the CPUs); Tune refuses
    # a trial of no resources at all, so it asks for a sliver.
    trainable = tune.with_resources(tune.with_parameters(run_trial, search_json=search.to_json()),
                                    {"CPU": TRIAL_CPUS})
    if search.resume:
        path = searches_path(settings, search.resume)
        if not tune.Tuner.can_restore(path, storage_filesystem=fs):
            raise Img2ImgError(f"search {search.resume} has no Tune state to resume in the store ({path})")
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    if search.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", max_t=total_steps, grace_period=grace,
                                  reduction_factor=search.reduction_factor)
    else:
        scheduler = pbt.scheduler(search, total_steps) if search.scheduler == "pbt" else FIFOScheduler()
    table = TrialTable(settings.mlflow_uri, search.run_id, [d.key for d in search.dims()], total_steps)
    return tune.Tuner(
        trainable,
        param_space={d.key: d.tune_domain() for d in search.dims()},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, num_samples=search.trials,
                                    max_concurrent_trials=search.max_concurrent, time_budget_s=search.time_budget_s),
        run_config=tune.RunConfig(name=search.run_id, storage_path=f"{settings.bucket}/searches",
                                  storage_filesystem=fs, callbacks=[table], verbose=1),
    )


def run(search: SearchSpec, settings: Settings | None = None):
    """The whole search: plan (refusing what can never run), tune, record, register the best,
    and with `promote` send it through the gate. -> (version, rows best first)."""
    settings = settings or get_settings()
    started = time.time()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
        stopping.on_stop()
    base = search.train
    job = training.plan_job(base, settings, ray.cluster_resources(), "this Ray cluster")
    total = job.plan.total_steps
    grace = search.grace_steps or max(1, total // 4)
    client = MlflowClient(settings.mlflow_uri)
    client.set_tag(search.run_id, TAG_PHASE, "training")
    stopping.STARTED.set()
    t_fit = time.time()
    grid = make_tuner(search, settings, total, grace).fit()
    fit_s = time.time() - t_fit
    rows = summarise(search, settings, grid, total)
    by_trial = {(r.metrics or {}).get("trial_id"): r for r in grid}
    table = [{k: v for k, v in r.items() if k != "best"} for r in rows]
    mlflow.set_tracking_uri(settings.mlflow_uri)
    with mlflow.start_run(run_id=search.run_id):
        mlflow.log_dict({"trials": table}, "trials.json")
        log_plot(search, grid, rows)
        mlflow.log_metrics({"trials_finished": sum(r["status"] == "finished" for r in rows),
                            "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows),
                            "trials_failed": sum(r["status"] == "failed" for r in rows), "time_search_s": fit_s})
        client.set_tag(search.run_id, TAG_PHASE, "registering")
        best = next((r for r in rows if r["best"] and r["run_id"]), None)
        if best is None:
            late = search.time_budget_s and fit_s >= search.time_budget_s
            raise Img2ImgError("no trial reported a val PSNR with a checkpoint"
                               + (f" within the search's --time-budget of {search.time_budget_s:g} s (give it more "
                                  "time, or report more often: --checkpoint-every)" if late else "")
                               + "; see the trials' runs")
        mlflow.log_metric(f"best_{METRIC}", best["best_val_psnr"])
        mlflow.set_tags({"best_trial": best["trial"], "best_run_id": best["run_id"],
                         "best_params": json.dumps(best["params"])})
    version, _ = register_best(search, settings, best, by_trial[best["trial"]], fit_s, started)
    client.set_tag(search.run_id, "registered_version", str(version))
    if search.promote and version is not None:
        promote_best(search, settings, str(version))
    client.set_tag(search.run_id, TAG_PHASE, "done")
    client.set_terminated(search.run_id, status="FINISHED")
    print(json.dumps({"search_id": search.run_id, "registered_model": base.registered_name, "version": version,
                      "trials": table}))
    return version, rows


def log_plot(search: SearchSpec, grid, rows: list[dict]) -> None:
    """`trials.png` on the search's (active) parent run: val PSNR against time, stopped vs
    finished (`jobs.search.plot`). A plot that cannot be drawn is logged, not fatal."""
    try:
        png = trials_png(series(grid, rows), f"search {search.run_id} ({search.scheduler})")
        with tempfile.TemporaryDirectory(prefix="img2img-plot-") as d:
            path = Path(d, "trials.png")
            path.write_bytes(png)
            mlflow.log_artifact(str(path))
    except Exception:
        log.exception("could not draw the trials' plot of search %s", search.run_id)


def promote_best(search: SearchSpec, settings: Settings, version: str) -> None:
    """`--promote`: the registered best through the gate (`registry.models.promote`): it becomes
    champion unless the gate objects (scored below the champion, worse than its input); a
    refusal is recorded on the search run and printed, the search still succeeds."""
    from registry.gate import Refused
    from registry.models import promote

    client = MlflowClient(settings.mlflow_uri)
    name = search.train.registered_name
    try:
        decision = promote(settings, name, version)
        verdict = f"promoted {name} v{version} to champion" if decision.changed else f"v{version} already champion"
    except Refused as e:
        verdict = f"the gate refused {name} v{version}: {e}"
    except Img2ImgError as e:
        verdict = f"could not promote {name} v{version}: {e}"
    client.set_tag(search.run_id, "promotion", verdict[:5000])
    print(verdict, flush=True)


def main(argv: list[str] | None = None) -> int:
    spec_json, deadline = driver_args("img2img hyper-parameter search driver", argv)
    search = SearchSpec.from_json(spec_json)
    settings = get_settings()
    stopping.on_stop()
    try:
        check_deadline(deadline)
        stopping.check_not_cancelled(settings, search.run_id)
        run(search, settings)
    except Img2ImgError as e:
        print(f"Error: {e}", file=sys.stderr)
        stopping.mark_ended(settings, search.run_id, str(e))
        end_cut_off_trials(settings, search.run_id)
        return 1
    except (stopping.JobStopped, KeyboardInterrupt):
        print("Stopped.", file=sys.stderr)
        if stopping.STARTED.is_set():
            stopping.mark_ended(settings, search.run_id, "stopped by the user", status="KILLED")
            end_cut_off_trials(settings, search.run_id)
        return 143
    except BaseException as e:
        stopping.mark_ended(settings, search.run_id, f"{type(e).__name__}: {e}")
        end_cut_off_trials(settings, search.run_id)
        raise
    return 0


def end_cut_off_trials(settings: Settings, search_id: str | None) -> None:
    """The search ended without finishing (stopped: SIGTERM, `stopping.STOP_REQUESTED`; or
    failed): its trials' actors die with the driver and never end their runs, or end them FAILED
    when the stop reached their training mid-step, so every child run still RUNNING, or ended
    FAILED since the stop came, ends KILLED here, tagged with why (`--resume` runs those again)."""
    if not search_id:
        return
    stopped = stopping.STOP_REQUESTED.is_set()
    why = "the search was stopped" if stopped else "the search failed"
    since = stopping.STOP_REQUESTED_AT_MS[0] if stopped and stopping.STOP_REQUESTED_AT_MS else None
    try:
        stopping.end_cut_off_children(MlflowClient(settings.mlflow_uri), search_id, since,
                                      {TAG_OUTCOME: f"cut off ({why})"})
    except Exception:  # the search's own end matters more than this bookkeeping
        log.exception("could not end the cut-off trials of search %s", search_id)


if __name__ == "__main__":
    sys.exit(main())
