"""`img2img pipeline run|status|ls|stop|schedule|schedules|unschedule`: ingest -> train -> evaluate -> gate -> deploy -> promote
as one cluster job (pipelines/)."""

from __future__ import annotations

from datetime import datetime

import typer

from cluster.cli_utils import console, json_option, print_json, print_table
from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from pipelines.spec import STEPS, check_force, load, parse
from translator.config import parse_overrides

pipeline_app = typer.Typer(help="Pipelines: ingest, train, evaluate, gate, deploy and promote as one cached, "
                                "resumable cluster job.", no_args_is_help=True)

TRAIN_FLAGS = ("variant", "workers", "cpus_per_worker", "epochs", "max_steps", "time_budget_s", "batch_size",
               "image_size", "lr", "init_from")


def _flags_spec(source, dataset, model, degrade, size, crops, finetune, eval_dataset, eval_split, sets, train,
                webhook=None):
    data: dict = {"dataset": dataset or _dataset_from(source, model)}
    for key, value in (("source", source), ("model", model)):
        if value is not None:
            data[key] = value
    ingest = {k: v for k, v in (("degrade", degrade), ("size", size), ("crops", crops)) if v is not None}
    if ingest:
        data["ingest"] = ingest
    data["train"] = {k: v for k, v in train.items() if v is not None}
    if finetune:
        data["train"]["finetune"] = True
    if sets:
        data["train"]["set"] = parse_overrides(sets)
    evaluate = {k: v for k, v in (("dataset", eval_dataset), ("split", eval_split)) if v is not None}
    if evaluate:
        data["evaluate"] = evaluate
    if webhook is not None:
        data["notify"] = {"webhook": webhook}
    return parse(data, "flags")


def _dataset_from(source: str | None, model: str | None) -> str:
    if model:
        return model
    if source:
        return source.rstrip("/").rsplit("/", 1)[-1] or "pipeline"
    raise Img2ImgError("give a pipeline file, or --dataset (or --source and --model)")


def _show(v, as_json: bool = False) -> None:
    if as_json:
        print_json(v.to_dict())
        return
    started = datetime.fromtimestamp(v.started).strftime("%Y-%m-%d %H:%M:%S") if v.started else ""
    console.print(f"pipeline {v.job_id or v.run_id} ({v.name}): {v.state}, started {started}", highlight=False)
    rows = []
    for s in v.steps:
        out = ", ".join(f"{k}={val}" for k, val in s.outputs.items() if k not in ("key",))
        rows.append([s.step, s.state + (" (cached)" if s.cached else ""),
                     f"{s.duration_s:.0f}s" if s.duration_s is not None else "", s.error or out])
    if rows:
        print_table("steps", ["step", "state", "duration", "output"], rows, ids=["step", "state"])
    if v.outcome:
        console.print(v.outcome, markup=False, highlight=False)
    if v.error:
        console.print(f"failed at {v.error}", markup=False, highlight=False)
    if v.notified:
        console.print(f"webhook: {v.notified}", markup=False, highlight=False)


def _follow(settings, job_id: str) -> None:
    from pipelines.client import follow

    def on_change(v) -> None:
        last = v.steps[-1] if v.steps else None
        if last:
            tag = " (cache hit)" if last.cached else ""
            console.print(f"{last.step}: {last.state}{tag}", markup=False, highlight=False)
        elif v.state == "QUEUED":
            console.print("queued", highlight=False)

    try:
        v = follow(settings, job_id, on_change)
    except KeyboardInterrupt:
        console.print(f"\nStopped following; the pipeline keeps running. Stop it with: img2img pipeline stop {job_id}",
                      highlight=False)
        raise typer.Exit(130) from None
    _show(v)
    if v.state != "FINISHED":
        raise Img2ImgError(f"pipeline {job_id} {v.state}" + (f" at {v.error}" if v.error else ""))


@pipeline_app.command("run")
def run(
    file: str = typer.Argument(None, help="pipeline.yaml (see docs/pipelines.md); or give the flags below"),
    source: str = typer.Option(None, help="photos to ingest: a folder or s3://bucket/prefix"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="dataset name (default: --model)"),
    model: str = typer.Option(None, help="registered model name (default: the dataset name)"),
    degrade: str = typer.Option(None, help="ingest: degradation spec, e.g. gaussian:1.5"),
    size: int = typer.Option(None, help="ingest: image size"),
    crops: int = typer.Option(None, help="ingest: random crops per photo"),
    variant: str = typer.Option(None, help="train: variant"),
    workers: int = typer.Option(None, help="train: workers"),
    cpus_per_worker: float = typer.Option(None, help="train: CPUs per worker"),
    epochs: int = typer.Option(None, help="train: epochs"),
    max_steps: int = typer.Option(None, help="train: optimiser steps"),
    time_budget: float = typer.Option(None, help="train: seconds of training"),
    batch_size: int = typer.Option(None, help="train: per-worker batch size"),
    image_size: int = typer.Option(None, help="train: crop size"),
    lr: float = typer.Option(None, help="train: learning rate"),
    set_: list[str] = typer.Option([], "--set", help="train: variant hyper-parameter key=value (repeatable)"),
    finetune: bool = typer.Option(False, "--finetune", help="train: start from the model's champion"),
    init_from: str = typer.Option(None, "--init-from", help="train: start from this registered version "
                                                            "(NAME@alias | NAME/VERSION)"),
    eval_dataset: str = typer.Option(None, help="evaluate: dataset (default: the model's evaluation set)"),
    eval_split: str = typer.Option(None, help="evaluate: val | train | all"),
    webhook: str = typer.Option(None, help="POST a JSON summary of the decision here when the run ends: an http(s) "
                                           "URL, or env:NAME (the URL in that variable on the cluster)"),
    force: str = typer.Option(None, help=f"re-run from this step whatever the cache holds: {' | '.join(STEPS)}"),
    priority: str = typer.Option("normal", help="high | normal | low (the pipeline's place in the queue)"),
    detach: bool = typer.Option(False, "--detach", help="submit and return; follow with `pipeline status ID -f`"),
):
    """Run a pipeline as one cluster job: each step is the job the CLI would have run, cached by its inputs.

    Example: `img2img pipeline run pipeline.yaml`, or
    `img2img pipeline run --source ./photos --degrade gaussian:1.5 --variant nafnet --model photos --max-steps 300`
    """
    check_force(force)
    train = dict(zip(TRAIN_FLAGS, (variant, workers, cpus_per_worker, epochs, max_steps, time_budget, batch_size,
                                   image_size, lr, init_from), strict=True))
    if file is not None:
        given = [k for k, v in {**train, "source": source, "dataset": dataset, "model": model}.items() if v]
        if given or set_ or finetune or webhook:
            raise Img2ImgError("give either a pipeline file or the flags, not both")
        spec = load(file)
    else:
        spec = _flags_spec(source, dataset, model, degrade, size, crops, finetune, eval_dataset, eval_split, set_,
                           train, webhook)
    from pipelines.client import submit  # deferred: mlflow, ray, torch

    settings = get_settings()
    out = submit(spec, settings, force=force, priority=priority)
    console.print(f"Submitted pipeline [bold]{out['id']}[/] ({spec.title}: {' -> '.join(spec.steps)})",
                  highlight=False)
    if detach:
        console.print(f"Follow it with: img2img pipeline status {out['id']} --follow", highlight=False)
        return
    _follow(settings, out["id"])


@pipeline_app.command()
def status(pipeline_id: str = typer.Argument(None, help="the pipeline's id (default: the latest)"),
           follow: bool = typer.Option(False, "--follow", "-f", help="show steps as they change until it ends"),
           as_json: bool = json_option()):
    """Each step's state, duration, cache hit and output, and the reason of a failure.

    Example: `img2img pipeline status --follow`
    """
    from pipelines.client import view

    settings = get_settings()
    v = view(settings, pipeline_id)
    if follow and v.state in ("RUNNING", "QUEUED"):
        _follow(settings, v.job_id)
        return
    _show(v, as_json)


@pipeline_app.command("ls")
def ls(as_json: bool = json_option()):
    """List pipeline runs, newest first.

    Example: `img2img pipeline ls`
    """
    from pipelines import record

    runs = record.pipelines(get_settings().mlflow_uri)
    rows = [[v.job_id, v.name, v.state, datetime.fromtimestamp(v.started).strftime("%Y-%m-%d %H:%M:%S"),
             sum(s.cached for s in v.steps), v.outcome or v.error] for v in runs]
    columns = ["id", "name", "state", "started", "cache hits", "outcome"]
    if as_json:
        print_json([v.to_dict() for v in runs])
        return
    print_table("pipelines", columns, rows, ids=["id", "name", "state"])


@pipeline_app.command()
def stop(pipeline_id: str):
    """Stop a pipeline run and the step job it is running.

    Example: `img2img pipeline stop raysubmit_abc123`
    """
    from pipelines.client import stop as stop_pipeline

    console.print(f"pipeline {pipeline_id}: {stop_pipeline(get_settings(), pipeline_id)}", highlight=False)


@pipeline_app.command("schedule")
def schedule(file: str = typer.Argument(..., help="pipeline.yaml"),
             every: str = typer.Option(None, help="run it every DURATION: 30m, 24h, 7d"),
             on_new_data: str = typer.Option(None, help="run it when objects under s3://bucket/prefix/ are added or "
                                             "changed (the prefix is the source when the file has none)"),
             debounce: float = typer.Option(60.0, help="--on-new-data: seconds the listing must stay still first"),
             poll: float = typer.Option(30.0, help="--on-new-data: seconds between listings")):
    """Keep a pipeline running unattended, on the cluster (it outlives this command).

    Example: `img2img pipeline schedule pipeline.yaml --on-new-data s3://img2img/incoming/photos/`
    """
    spec = load(file)
    from pipelines.schedule import schedule as start  # deferred: mlflow, ray, torch

    sid = start(spec, get_settings(), every=every, on_new_data=on_new_data, debounce_s=debounce, poll_s=poll)
    console.print(f"Scheduled {spec.title}: schedule [bold]{sid}[/]; list with `img2img pipeline schedules`, "
                  f"remove with `img2img pipeline unschedule {sid}`", highlight=False)


@pipeline_app.command("schedules")
def schedules(as_json: bool = json_option()):
    """List the schedules running on the cluster.

    Example: `img2img pipeline schedules`
    """
    from pipelines.schedule import schedules as live

    rows = live(get_settings())
    if as_json:
        print_json(rows)
        return
    columns = ["id", "name", "model", "trigger", "status"]
    print_table("schedules", columns, [[r[c] for c in columns] for r in rows], ids=["id", "name"])


@pipeline_app.command("unschedule")
def unschedule(schedule_id: str):
    """Remove a schedule (a pipeline it started runs on to its end).

    Example: `img2img pipeline unschedule raysubmit_abc123`
    """
    from pipelines.schedule import unschedule as remove

    console.print(f"schedule {schedule_id}: {remove(get_settings(), schedule_id)}", highlight=False)
