"""`img2img tune`: a hyper-parameter search with Ray Tune (one cluster job), and its live table."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cluster.cli_utils import console
from cluster.settings import get_settings
from jobs.training.plan import check_options
from translator.catalog import DEFAULT_VARIANT, variant_names
from translator.config import parse_overrides


def tune(
    dataset: str = typer.Option(None, "--dataset", "-d", help="dataset name (see `img2img data ls`)"),
    search: list[str] = typer.Option([], "--search", "-s", help="KEY=DIST(ARGS), repeatable: loguniform(low,high), "
                                     "uniform(low,high), randint(low,high), choice(v1,v2,...), grid(v1,v2,...)"),
    trials: int = typer.Option(4, help="samples drawn from the space (each grid key multiplies them)"),
    scheduler: str = typer.Option("asha", help="asha: stop trials whose val PSNR falls behind at a rung; "
                                  "pbt: Population Based Training (the bottom trials continue from the top ones' "
                                  "checkpoints with mutated values); fifo: run every trial to its end"),
    perturbation_interval: int = typer.Option(None, help="PBT: steps between perturbations "
                                              "(default: a quarter of the trials' steps)"),
    time_budget: str = typer.Option(None, help="the whole search's time: 90s, 30m, 1h; then every trial stops "
                                    "and the best so far is registered"),
    max_concurrent: int = typer.Option(1, help="trials running at once; the job reserves that many trials' CPUs"),
    grace_steps: int = typer.Option(None, help="ASHA: steps every trial runs before it can be stopped "
                                    "(default: a quarter of the trials' steps)"),
    reduction_factor: int = typer.Option(2, help="ASHA: keep the top 1/N of the trials at each rung"),
    variant: str = typer.Option(DEFAULT_VARIANT, help=" | ".join(variant_names())),
    workers_per_trial: int = typer.Option(1, help="data-parallel Ray Train workers of each trial"),
    gpu: bool = typer.Option(False, "--gpu/--cpu", help="one GPU per worker"),
    cpus_per_worker: float = typer.Option(1.0, help="CPUs reserved per worker (fractions allowed)"),
    epochs: int = typer.Option(None, help="each trial's passes over the training split"),
    max_steps: int = typer.Option(None, help="each trial's optimiser steps"),
    trial_time_budget: float = typer.Option(None, help="each trial's seconds of training"),
    batch_size: int = typer.Option(None, help="per-worker batch size (default: the variant's)"),
    image_size: int = typer.Option(None, help="training crop size (default: the variant's)"),
    lr: float = typer.Option(None, help="learning rate when lr is not searched (default: the variant's)"),
    set_: list[str] = typer.Option([], "--set", help="fixed variant hyper-parameter key=value (repeatable)"),
    checkpoint_every: str = typer.Option("auto", help="validate + checkpoint cadence of each trial: steps ('200'), "
                                         "duration ('5m'), 'epoch'; the scheduler decides at these reports"),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16"),
    experiment: str = typer.Option("img2img", help="MLflow experiment"),
    model_name: str = typer.Option(None, help="registered model the best trial becomes a version of "
                                   "(default: the dataset name)"),
    promote: bool = typer.Option(False, "--promote", help="send the best trial's version through the gate"),
    resume: str = typer.Option(None, "--resume", help="continue search SEARCH_ID where it stopped (Tune's restore)"),
    priority: str = typer.Option("normal", help="high | normal | low (the cluster's queue)"),
    queue_timeout: float = typer.Option(None, help="seconds the search may wait in the queue"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show a live table of trials until the job ends"),
):
    """Search hyper-parameters: trials are real training runs, ASHA stops the ones falling behind,
    the best is registered as a model version.

    Example: `img2img tune --dataset photos --variant autoencoder --search 'lr=loguniform(1e-4,3e-3)'
    --search 'nf=choice(16,32)' --trials 4 --max-steps 200 --follow`
    """
    from cluster.errors import Img2ImgError
    from jobs.search.spec import SearchSpec, check_search_options, parse_budget

    check_options(workers=workers_per_trial, cpus_per_worker=cpus_per_worker, epochs=epochs, max_steps=max_steps,
                  time_budget_s=trial_time_budget, precision=precision, checkpoint_every=checkpoint_every)
    search_budget_s = parse_budget(time_budget)
    check_search_options(trials, scheduler, max_concurrent, grace_steps, reduction_factor, perturbation_interval)
    if not resume and not dataset:
        raise Img2ImgError("give --dataset (or --resume SEARCH_ID)")
    base = dict(dataset=dataset or "", variant=variant, config=parse_overrides(set_), workers=workers_per_trial,
                use_gpu=gpu, cpus_per_worker=cpus_per_worker, epochs=epochs, max_steps=max_steps,
                time_budget_s=trial_time_budget, batch_size=batch_size, image_size=image_size, lr=lr,
                experiment=experiment, model_name=model_name, checkpoint_every=checkpoint_every,
                precision=precision)
    spec = SearchSpec(base=base, space=search, trials=trials,
                      scheduler=scheduler, max_concurrent=max_concurrent, grace_steps=grace_steps,
                      reduction_factor=reduction_factor, promote=promote, resume=resume,
                      perturbation_interval=perturbation_interval, time_budget_s=search_budget_s)
    if not resume:
        spec.validate()  # the space against the variant, before any service is contacted
    # deferred: imports mlflow, ray, torch (seconds of every CLI start)
    from jobs.search.client import submit

    settings = get_settings()
    out = submit(spec, settings, priority=priority, queue_timeout_s=queue_timeout)
    s = out["search"]
    console.print(f"Submitted search [bold]{out['job_id']}[/] ({s.train.variant} on {s.train.dataset}: "
                  f"{s.trials} samples of {'; '.join(s.space)}, {s.scheduler}, {s.max_concurrent} at a time, "
                  f"reserving {out['footprint'].describe()})", highlight=False)
    console.print(f"Search id (MLflow parent run): {out['search_id']}  {out['run_url']}", highlight=False)
    if not follow:
        console.print(f"Follow it with: img2img jobs status {out['job_id']}", highlight=False)
        return
    status = follow_search(settings, out["job_id"], out["search_id"])
    if status != "SUCCEEDED":
        raise Img2ImgError(f"search job {out['job_id']} {status}; see `img2img jobs logs {out['job_id']}`")


def trials_table(rows: list[dict], title: str = "") -> Table:
    """The trials side by side, best first: trial, values, status, step, val PSNR (latest, best), samples/s."""
    from jobs.search.trials import ranked

    table = Table(title=title or None)
    for col in ("trial", "values", "status", "step", "val PSNR", "best", "samples/s"):
        table.add_column(col)
    fmt = lambda v, spec=".2f": "" if v is None else format(v, spec)  # noqa: E731
    for r in ranked(rows):
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        table.add_row(r["trial"], values, r["status"], str(r["step"]), fmt(r.get("val_psnr")),
                      fmt(r.get("best_val_psnr")), fmt(r.get("samples_per_s"), ".1f"))
    return table


def follow_search(settings, job_id: str, search_id: str, poll_s: float = 3.0) -> str:
    """The live table of trials (from the search's parent run) until the job ends -> its status."""
    from rich.live import Live

    from jobs.manage import job_info
    from jobs.search.trials import read_rows
    from jobs.training.client import job_client
    from jobs.training.progress import TERMINAL

    client = job_client(settings)
    with Live(trials_table([]), console=console, refresh_per_second=1, transient=False) as live:
        while True:
            status = job_info(client, job_id)["status"]
            rows = read_rows(settings.mlflow_uri, search_id)
            live.update(trials_table(rows, f"search {search_id}: {status}"))
            if status in TERMINAL:
                break
            time.sleep(poll_s)
    if status == "SUCCEEDED":
        from mlflow.tracking import MlflowClient

        tags = MlflowClient(settings.mlflow_uri).get_run(search_id).data.tags
        console.print(f"Best trial {tags.get('best_trial')}: {tags.get('best_params')}; registered as version "
                      f"{tags.get('registered_version')}", highlight=False)
        if tags.get("promotion"):
            console.print(tags["promotion"], highlight=False, markup=False)
    return status
