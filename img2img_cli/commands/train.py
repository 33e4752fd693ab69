"""`img2img train`: submit a training job (and follow it)."""

from __future__ import annotations

import typer
from rich.markup import escape

from cluster.cli_utils import console, err_console
from cluster.settings import get_settings
from jobs.training.plan import check_options
from registry.refs import parse_ref
from translator.catalog import DEFAULT_VARIANT, variant_names
from translator.config import parse_overrides


def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (see `img2img data ls`)"),
    variant: str = typer.Option(None, help=" | ".join(variant_names())
                                + f" (default: {DEFAULT_VARIANT}, or the --init-from model's / --resume run's)"),
    workers: int = typer.Option(2, help="data-parallel Ray Train workers"),
    gpu: bool = typer.Option(False, "--gpu/--cpu", help="one GPU per worker, bf16 autocast"),
    cpus_per_worker: float = typer.Option(1.0, help="CPUs reserved per worker (fractions allowed)"),
    epochs: int = typer.Option(None, help="passes over the training split (default: 10 when no other limit is "
                               "given; with --max-steps or --time-budget alone, no epoch limit)"),
    max_steps: int = typer.Option(None, help="stop after this many optimiser steps"),
    time_budget: float = typer.Option(None, help="stop after this many seconds of training (then validate, "
                                      "checkpoint and register); every limit you give counts, the first "
                                      "reached ends the run"),
    batch_size: int = typer.Option(None, help="per-worker batch size (default: the variant's)"),
    image_size: int = typer.Option(None, help="training crop size (default: the variant's)"),
    lr: float = typer.Option(None, help="learning rate (default: the variant's)"),
    set_: list[str] = typer.Option([], "--set", help="variant hyper-parameter key=value (repeatable)"),
    experiment: str = typer.Option("img2img", help="MLflow experiment"),
    model_name: str = typer.Option(None, help="registered model name (default: the dataset name)"),
    resume: str = typer.Option(None, help="MLflow run id whose last checkpoint to continue from (same variant and "
                               "architecture; its config fills what you leave unset)"),
    init_from: str = typer.Option(None, "--init-from", help="start from a registered model's weights: "
                                  "NAME@alias or NAME/VERSION (same variant and architecture)"),
    max_failures: int = typer.Option(2, help="worker failures to recover from (from the last checkpoint)"),
    spread: bool = typer.Option(False, "--spread/--pack", help="place the workers on as many Ray nodes as "
                                "possible (DDP across machines) instead of filling one node first"),
    stall_timeout: float = typer.Option(1800.0, help="end the job, with the reason, when its step has not moved "
                                        "for this many seconds while training (0: never)"),
    checkpoint_every: str = typer.Option("auto", help="validate + checkpoint every N steps ('200'), every "
                                         "duration ('5m', '30s') or 'epoch'; 'auto' = every 2 minutes; "
                                         "always once at the end"),
    precision: str = typer.Option("auto", help="auto: bf16 autocast + channels_last on GPUs and on CPUs "
                                  "with native bf16 (about 1.6x the samples/s), fp32 elsewhere; fp32; bf16"),
    priority: str = typer.Option("normal", help="high | normal | low: a job waits in the cluster's queue behind "
                                 "running jobs; a higher priority goes ahead of queued lower ones"),
    queue_timeout: float = typer.Option(None, help="seconds a job may wait in the queue before it is ended, "
                                        "not started (default: 24 h)"),
    preempt: bool = typer.Option(False, "--preempt", help="when it does not fit, stop the lower-priority running "
                                 "training jobs it needs room from: each saves a checkpoint and is re-queued, "
                                 "and resumes from it"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show live progress until the job ends"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="with --follow: the job's raw logs instead"),
    local: bool = typer.Option(False, "--local", help="run here on a throwaway local Ray (debugging)"),
):
    """Submit a training job of a translator variant to the Ray cluster.

    Example: `img2img train --dataset photos --variant nafnet --workers 2 --epochs 5 --follow`

    Fine-tune: `img2img train --dataset my-photos --init-from photos@champion --epochs 3 --lr 2e-4`
    """
    # Before anything heavy is imported or any service contacted: a bad value is refused at once.
    check_options(workers=workers, cpus_per_worker=cpus_per_worker, epochs=epochs, max_steps=max_steps,
                  time_budget_s=time_budget, precision=precision, checkpoint_every=checkpoint_every,
                  stall_timeout_s=stall_timeout)
    if init_from is not None:
        parse_ref(init_from)
    # deferred: imports mlflow, ray, torch (seconds of every CLI start)
    from jobs.manage import follow_progress, outcome_error, wait
    from jobs.training.client import job_client, run_local, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=dataset, variant=variant or ("" if init_from or resume else DEFAULT_VARIANT),
                     config=parse_overrides(set_), workers=workers,
                     use_gpu=gpu, cpus_per_worker=cpus_per_worker, epochs=epochs, max_steps=max_steps,
                     time_budget_s=time_budget, batch_size=batch_size, image_size=image_size, lr=lr,
                     experiment=experiment, model_name=model_name, resume=resume, max_failures=max_failures,
                     spread=spread, stall_timeout_s=stall_timeout, checkpoint_every=checkpoint_every,
                     init_from=init_from, precision=precision)
    settings = get_settings()
    if local:
        out = run_local(spec, settings)
        console.print(f"Done: run {out['run_id']}, registered {spec.registered_name} v{out['version']}")
        return
    out = submit(spec, settings, priority=priority, queue_timeout_s=queue_timeout, preempt=preempt)
    plan = out["plan"]
    console.print(f"Submitted job [bold]{out['job_id']}[/] ({spec.variant} on {dataset}, {workers} workers"
                  + (f", from {spec.parent}" if spec.parent else "") + "): "
                  f"batch {plan.batch_size} per worker, {plan.steps_per_epoch} steps per epoch; ends after "
                  f"{plan.describe()}", highlight=False)
    for note in plan.notes():
        console.print(f"Note: {note}", markup=False, highlight=False)
    console.print(f"MLflow run: {out['run_url']}", highlight=False)
    for victim in out["preempting"]:
        console.print(f"Preempting {victim}: it saves a checkpoint, is re-queued behind this job and resumes from it",
                      highlight=False)
    if not follow:
        console.print(f"Follow it with: img2img jobs status {out['job_id']} --follow", highlight=False)
        return
    client = job_client(settings)
    try:
        warnings: list[str] = []
        if verbose:
            status, message = wait(client, out["job_id"], follow=True), ""
        else:
            snap = follow_progress(client, settings, out["job_id"], out["run_id"])
            status, message = snap.status, snap.error or snap.message
            warnings = snap.warnings
    except KeyboardInterrupt:
        console.print(f"\nStopped following; the job keeps running. Stop it with: img2img jobs stop {out['job_id']}",
                      highlight=False)
        raise typer.Exit(130) from None
    error = outcome_error(out["job_id"], status, message)
    if error:
        raise error
    console.print(f"Job {out['job_id']} SUCCEEDED" + (", but:" if warnings else ""))
    print_warnings(warnings)


def print_warnings(warnings: list[str]) -> None:
    """The job's verdicts on the model it registered (e.g. WORSE than its input), after it ended."""
    for w in warnings:
        err_console.print(f"[bold yellow]WARNING:[/] {escape(w)}", highlight=False)
