"""`img2img eval`: score a registered model on a dataset, on the cluster."""

from __future__ import annotations

import json
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli_utils import console, err_console, table
from cluster.settings import get_settings
from jobs.evaluation.spec import check_options
from registry.refs import parse_ref


@contextmanager
def progress_bar(description: str):
    """A rich progress bar over images (on stderr, so --json output stays clean) ->
    a `progress(done, total)` callback."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def metrics_rows(summary: dict) -> list[list[str]]:
    """An eval summary -> table rows (metric, output, input, gain) for the console: the set's PSNR
    (pooled MSE) and SSIM, then the per-image extras that exist (images improved, median gain)."""
    m = summary["metrics"]
    if "psnr" in m:
        rows = [["PSNR (dB, pooled MSE)", f"{m['psnr']:.2f}", f"{m['input_psnr']:.2f}", f"{m['gain_db']:+.2f}"],
                ["SSIM", f"{m['ssim']:.4f}", f"{m['input_ssim']:.4f}", f"{m['ssim'] - m['input_ssim']:+.4f}"]]
        changed = summary["images"] - int(m.get("unchanged", 0))
        if "improved_share" in m:
            rows.append([f"images improved (of {changed} changed)", f"{m['improved_share']:.0%}", "-", "-"])
        if "median_gain_db" in m:
            rows.append(["median per-image gain (dB)", "-", "-", f"{m['median_gain_db']:+.2f}"])
        if m.get("unchanged"):
            rows.append(["pairs input == target", f"{int(m['unchanged'])}", "-", "-"])
        return rows
    return [["cycle PSNR (dB)", f"{m['cycle_psnr']:.2f}", "-", "-"],
            ["cycle SSIM", f"{m['cycle_ssim']:.4f}", "-", "-"]]


def eval_(
    model: str = typer.Argument(..., help="registered model: NAME@alias or NAME/VERSION"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (see `img2img data ls`)"),
    split: str = typer.Option("val", help="val | train | all"),
    limit: int = typer.Option(None, help="score only the first N images (not stored as the version's result)"),
    workers: int = typer.Option(1, help="model replicas (Ray Data actors), each loads the model once"),
    cpus_per_worker: float = typer.Option(1.0, help="CPUs per replica"),
    gpu: bool = typer.Option(None, "--gpu/--cpu", help="one GPU per replica (default: if the cluster has one)"),
    priority: str = typer.Option("normal", help="high | normal | low: its place in the cluster's job queue"),
    queue_timeout: float = typer.Option(None, help="seconds it may wait in the queue (default: 24 h)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Score a registered model on a dataset (full images, tiled), on the cluster: PSNR and SSIM
    of the output and of the input against the target, and the gain; unpaired datasets by cycle
    PSNR/SSIM. Logs an MLflow evaluation run and tags the version `eval.<dataset>.*`.

    Example: `img2img eval photos@champion --dataset photos --split val`
    """
    parse_ref(model)
    check_options(split, limit, workers, cpus_per_worker)  # refused before ray and mlflow load
    # deferred: the evaluation client imports ray and mlflow (seconds of every CLI start)
    from jobs.evaluation.client import evaluate

    with progress_bar(f"evaluating {model} on {dataset}/{split}") as progress:
        summary = evaluate(get_settings(), model, dataset, split, limit, progress=progress, workers=workers,
                           cpus_per_worker=cpus_per_worker, gpu=gpu, priority=priority,
                           queue_timeout_s=queue_timeout)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    title = (f"{summary['model']} v{summary['version']} ({summary['variant']}) on {summary['dataset']}/"
             f"{summary['split']}: {summary['images']} images in {summary['seconds']:.0f}s")
    scale = summary.get("scale", 1)  # super-resolution: the input is scored as its bicubic upscale
    inp = f"input (bicubic {scale}x)" if scale > 1 else "input"
    console.print(table(title, ["metric", "output", inp, "gain"], metrics_rows(summary)))
    console.print(f"MLflow evaluation run: {summary['run_id']}"
                  + ("" if summary.get("limit") else f" (tags eval.{summary['dataset']}.* set on the version)"))
