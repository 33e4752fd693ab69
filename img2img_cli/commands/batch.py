"""`img2img batch`: a folder or bucket prefix of images enhanced on the cluster."""

from __future__ import annotations

import json
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli_utils import console, err_console, table
from cluster.settings import get_settings
from jobs.batch.spec import check_options
from registry.refs import parse_ref


@contextmanager
def progress_bars():
    """One rich bar per stage (uploading, enhancing, downloading) on stderr -> `progress(what, done, total)`."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield progress


def batch(
    src: str = typer.Argument(..., help="input: s3://BUCKET/PREFIX/ (or one object), or a local folder or file"),
    dst: str = typer.Option(..., "--output", "-o", help="output: s3://BUCKET/PREFIX/, or a local folder (or file)"),
    model: str = typer.Option(..., "--model", "-m", help="registered model: NAME@champion, NAME/VERSION or NAME"),
    workers: int = typer.Option(1, help="model replicas (Ray Data actors), each loads the model once"),
    cpus_per_worker: float = typer.Option(1.0, help="CPUs per replica"),
    gpu: bool = typer.Option(None, "--gpu/--cpu", help="one GPU per replica (default: if the cluster has one)"),
    fmt: str = typer.Option("png", "--format", help="png: every output a PNG | same: the input's format where "
                                                    "it can be written (png, jpeg, webp, tiff), else PNG"),
    max_megapixels: float = typer.Option(100.0, help="larger images are listed as failed (read from their header)"),
    follow: bool = typer.Option(False, "--follow", help="wait for the job and print its report (implied by a "
                                                        "local output)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be processed; submit nothing"),
    priority: str = typer.Option("normal", help="high | normal | low: its place in the cluster's job queue"),
    queue_timeout: float = typer.Option(None, help="seconds it may wait in the queue (default: 24 h)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Enhance every image under SRC with a registered model, on the cluster, into DST at the
    same relative paths (the endpoint's codec and tiled path: 16-bit, alpha, ICC and EXIF kept).
    A re-run skips outputs already made from the same input by the same model version;
    unreadable files are listed in the report (DST/batch-manifest.json), never fatal.

    Example: `img2img batch s3://img2img/scans/ -o s3://img2img/scans-enhanced/ --model photos@champion --follow`
    """
    parse_ref(model)
    check_options(fmt, workers, cpus_per_worker, max_megapixels)  # refused before ray and mlflow load
    # deferred: the batch client imports ray and mlflow (seconds of every CLI start)
    from jobs.batch import client

    settings = get_settings()
    req = client.prepare(settings, src, dst, model, fmt, workers, cpus_per_worker, gpu, max_megapixels)
    if dry_run:
        items = client.dry_run(settings, req)
        rows = [[i.key, f"{i.size:,}", i.out_key, i.reason or "process"] for i in items]
        console.print(table(f"{sum(not i.reason for i in items)} of {len(items)} files would be processed by "
                            f"{req.spec.model} v{req.spec.version} into {req.dst}",
                            ["input", "bytes", "output", "action"], rows))
        from jobs.batch.estimate import estimate_line

        console.print(estimate_line(settings, req.spec, items, req.local_src))
        return
    with progress_bars() as progress:
        job_id = client.submit(settings, req, priority, queue_timeout, progress)
        err_console.print(f"submitted batch job {job_id} ({req.spec.model} v{req.spec.version})")
        if not (follow or req.local_dst):
            console.print(f"follow it with: img2img jobs status {job_id} ; report: {req.dst.manifest_key}")
            return
        summary = client.follow(settings, job_id, progress)
        if req.local_dst:
            client.download(settings, req, progress)
        client.clean_staging(settings, req)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    where = req.local_dst or summary["manifest"]
    console.print(f"{summary['written']} written, {summary['skipped']} skipped (already done), "
                  f"{summary['failed']} failed of {summary['files']} files in {summary['seconds']:.0f}s "
                  f"({summary['images_per_s']:.2f} images/s) -> {where}")
    if summary["failures"]:
        console.print(table("failed", ["input", "reason"], [[f["key"], f["reason"]] for f in summary["failures"]]))
    console.print(f"manifest: {summary['manifest']} ; MLflow run: {summary['run_id']}")
