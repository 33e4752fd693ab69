"""`img2img jobs ls|status|logs|stop`: the jobs on the Ray cluster."""

from __future__ import annotations

import typer

from cluster.admission import current_id
from cluster.cli_utils import console, json_option, print_json, print_table, records
from cluster.settings import get_settings
from img2img_cli.commands.train import print_warnings

jobs_app = typer.Typer(help="List, inspect, follow and stop training jobs on the Ray cluster.",
                       no_args_is_help=True)


@jobs_app.command("ls")
def ls(as_json: bool = json_option()):
    """List training and evaluation jobs: id, status (QUEUED #N: its place in the queue), model,
    variant, dataset, submitted, duration (queued: how long it has waited and for what).

    Example: `img2img jobs ls --json`
    """
    # deferred: imports mlflow and ray (a second of every CLI start)
    from cluster.services import job_client
    from jobs.manage import job_rows

    settings = get_settings()
    rows = job_rows(job_client(settings), settings)
    columns = ["id", "status", "model", "variant", "dataset", "submitted", "duration"]
    if as_json:
        print_json(records(columns, rows))
        return
    print_table("jobs", columns, rows, ids=["id", "status", "model", "variant", "dataset"])


@jobs_app.command()
def status(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="live progress until it ends"),
           as_json: bool = json_option()):
    """Show one job's status, progress (step, epoch, loss, val PSNR, samples/s, elapsed, ETA) and MLflow run.
    With --follow, exits 1 (naming the final status) unless the job SUCCEEDED.

    Example: `img2img jobs status raysubmit_abc123 --follow` (or `--json` for scripts)
    """
    # deferred: imports mlflow and ray (a second of every CLI start)
    from cluster.services import job_client
    from jobs.manage import TERMINAL, follow_progress, job_info, job_summary, outcome_error, wait

    settings = get_settings()
    client = job_client(settings)
    info = job_summary(client, settings, job_id)
    if as_json:
        print_json(info)
        return
    warnings = info.pop("warnings", [])
    for k, v in info.items():
        if k == "message" and v == info.get("error"):  # said once, as the error
            continue
        console.print(f"{k:>18}: {v}", markup=False, highlight=False, soft_wrap=True)
    status, message = info["status"], info.get("error") or info.get("message") or ""
    if follow and status not in TERMINAL:
        if info.get("img2img") == "search":
            from img2img_cli.commands.tune import follow_search

            status = follow_search(settings, info["job_id"], info["run_id"])
            message = job_info(client, info["job_id"])["message"]
        elif info.get("run_id"):
            snap = follow_progress(client, settings, job_id, info["run_id"])
            status, message, warnings = snap.status, snap.error or snap.message, snap.warnings
        else:
            status = wait(client, job_id, follow=False)
            message = job_info(client, job_id)["message"]
    if status == "SUCCEEDED" and warnings:  # the verdict, whether the job ended before or while following
        console.print(f"Job {info['job_id']} SUCCEEDED, but:", highlight=False)
        print_warnings(warnings)
    error = outcome_error(job_id, status, message) if follow else None
    if error:
        raise error


@jobs_app.command()
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="keep streaming until it ends")):
    """Print a job's raw logs (unwrapped; colour codes removed when not on a terminal).
    With --follow, exits 1 (naming the final status) unless the job SUCCEEDED.

    Example: `img2img jobs logs raysubmit_abc123 --follow`
    """
    # deferred: imports mlflow and ray (a second of every CLI start)
    from cluster.services import job_client
    from jobs.manage import job_info, outcome_error, wait
    from jobs.training.progress import write_raw

    client = job_client(get_settings())
    job_info(client, job_id)
    job_id = current_id(client, job_id)  # handed back to Ray behind a higher priority: its new id
    if follow:
        status = wait(client, job_id, follow=True)
        error = outcome_error(job_id, status, job_info(client, job_id)["message"], logs_hint=False)
        if error:
            raise error
    else:
        write_raw(client.get_job_logs(job_id))


@jobs_app.command()
def stop(job_id: str):
    """Stop a running job (its CPUs are free when this returns) or cancel a queued one (it never
    starts); its MLflow run ends KILLED.

    Example: `img2img jobs stop raysubmit_abc123`
    """
    # deferred: imports mlflow and ray (a second of every CLI start)
    from cluster.services import job_client
    from jobs.manage import stop as stop_job

    settings = get_settings()
    outcome = stop_job(job_client(settings), settings, job_id)
    if outcome == "stopped":
        console.print(f"Stopped {job_id}", highlight=False)
    elif outcome == "cancelled":
        console.print(f"Cancelled {job_id}: it was queued and will never start", highlight=False)
    else:
        console.print(f"Job {job_id} had {outcome.replace('already ', 'already ended: ')}; nothing to stop",
                      highlight=False)
