"""`img2img train` and `img2img jobs ls|status|logs|stop`."""

from __future__ import annotations

import typer

from cluster.cli_utils import console, handle_errors, json_option, print_json, print_table, records
from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from translator.catalog import DEFAULT_VARIANT, variant_names

jobs_app = typer.Typer(help="List, inspect, follow and stop training jobs on the Ray cluster.",
                       no_args_is_help=True)


@handle_errors
def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (see `img2img data ls`)"),
    variant: str = typer.Option(None, help=" | ".join(variant_names())
                                + f" (default: {DEFAULT_VARIANT}, or the --init-from model's)"),
    workers: int = typer.Option(2, help="data-parallel Ray Train workers"),
    gpu: bool = typer.Option(False, "--gpu/--cpu", help="one GPU per worker, bf16 autocast"),
    cpus_per_worker: float = typer.Option(1.0, help="CPUs reserved per worker (fractions allowed)"),
    epochs: int = typer.Option(10, help="passes over the training split"),
    max_steps: int = typer.Option(None, help="stop after this many optimiser steps"),
    time_budget: float = typer.Option(None, help="stop at the first epoch end after this many seconds"),
    batch_size: int = typer.Option(None, help="per-worker batch size (default: the variant's)"),
    image_size: int = typer.Option(None, help="training crop size (default: the variant's)"),
    lr: float = typer.Option(None, help="learning rate (default: the variant's)"),
    set_: list[str] = typer.Option([], "--set", help="variant hyper-parameter key=value (repeatable)"),
    experiment: str = typer.Option("img2img", help="MLflow experiment"),
    model_name: str = typer.Option(None, help="registered model name (default: the dataset name)"),
    resume: str = typer.Option(None, help="MLflow run id whose last checkpoint to continue from"),
    init_from: str = typer.Option(None, "--init-from", help="start from a registered model's weights: "
                                  "NAME@alias or NAME/VERSION (same variant and architecture)"),
    max_failures: int = typer.Option(2, help="worker failures to recover from (from the last checkpoint)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream the job's logs until it ends"),
    local: bool = typer.Option(False, "--local", help="run here on a throwaway local Ray (debugging)"),
):
    """Submit a training job of a translator variant to the Ray cluster.

    Example: `img2img train --dataset photos --variant nafnet --workers 2 --epochs 5 --follow`

    Fine-tune: `img2img train --dataset my-photos --init-from photos@champion --epochs 3 --lr 2e-4`
    """
    from jobs.spec import TrainSpec
    from jobs.submit import job_client, run_local, submit, wait
    from translator.config import parse_overrides

    spec = TrainSpec(dataset=dataset, variant=variant or ("" if init_from else DEFAULT_VARIANT),
                     config=parse_overrides(set_), workers=workers,
                     use_gpu=gpu, cpus_per_worker=cpus_per_worker, epochs=epochs, max_steps=max_steps,
                     time_budget_s=time_budget, batch_size=batch_size, image_size=image_size, lr=lr,
                     experiment=experiment, model_name=model_name, resume=resume, max_failures=max_failures,
                     init_from=init_from)
    settings = get_settings()
    if local:
        out = run_local(spec, settings)
        console.print(f"Done: run {out['run_id']}, registered {spec.registered_name} v{out['version']}")
        return
    out = submit(spec, settings)
    console.print(f"Submitted job [bold]{out['job_id']}[/] ({spec.variant} on {dataset}, {workers} workers"
                  + (f", from {spec.parent})" if spec.parent else ")"))
    console.print(f"MLflow run: {out['run_url']}")
    if not follow:
        console.print(f"Follow it with: img2img jobs logs {out['job_id']} --follow")
        return
    status = wait(job_client(settings), out["job_id"], follow=True,
                  echo=lambda s, end="": console.print(s, end=end, markup=False, highlight=False))
    if status != "SUCCEEDED":
        raise Img2ImgError(f"job {out['job_id']} {status}; see `img2img jobs logs {out['job_id']}`")
    console.print(f"Job {out['job_id']} SUCCEEDED")


@jobs_app.command("ls")
@handle_errors
def ls(as_json: bool = json_option()):
    """List training jobs: id, status, variant, dataset, started, duration.

    Example: `img2img jobs ls --json`
    """
    from jobs.submit import job_client, job_rows

    rows = job_rows(job_client(get_settings()))
    columns = ["id", "status", "variant", "dataset", "started", "duration"]
    if as_json:
        print_json(records(columns, rows))
        return
    print_table("training jobs", columns, rows, ids=["id", "status", "variant", "dataset"])


@jobs_app.command()
@handle_errors
def status(job_id: str, as_json: bool = json_option()):
    """Show one job's status, message and MLflow run.

    Example: `img2img jobs status raysubmit_abc123 --json`
    """
    from jobs.submit import job_client, job_info

    info = job_info(job_client(get_settings()), job_id)
    if as_json:
        print_json(info)
        return
    for k, v in info.items():
        console.print(f"{k:>10}: {v}", markup=False, highlight=False)


@jobs_app.command()
@handle_errors
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="keep streaming until it ends")):
    """Print a job's logs.

    Example: `img2img jobs logs raysubmit_abc123 --follow`
    """
    from jobs.submit import job_client, job_info, wait

    client = job_client(get_settings())
    job_info(client, job_id)
    if follow:
        wait(client, job_id, follow=True, echo=lambda s, end="": console.print(s, end=end, markup=False,
                                                                              highlight=False))
    else:
        console.print(client.get_job_logs(job_id), markup=False, highlight=False)


@jobs_app.command()
@handle_errors
def stop(job_id: str):
    """Stop a running job.

    Example: `img2img jobs stop raysubmit_abc123`
    """
    from jobs.submit import job_client, job_info

    client = job_client(get_settings())
    job_info(client, job_id)
    client.stop_job(job_id)
    console.print(f"Stop requested for {job_id}")
