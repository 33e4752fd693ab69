"""`img2img data ingest|ls|show|verify|rm`: datasets of image pairs on the object store."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli_utils import (
    check_output_file,
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)
from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from cluster.storage import Storage
from translator import degrade as degradations

data_app = typer.Typer(help="Ingest, list, inspect, verify and delete datasets of image pairs.",
                       no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@data_app.command()
def ingest(
    src: str = typer.Argument(None, help="local folder or s3://bucket/prefix (omit with --sample)"),
    name: str = typer.Option(..., "--name", "-n", help="dataset name"),
    kind: str = typer.Option("synth", help="synth (clean photos -> degraded pairs) | aligned | unaligned"),
    degrade: str = typer.Option(None, help=f"synth only (default gaussian:1.5): {degradations.rules()}; "
                                "e.g. 'mix(gaussian:3,resize:4)'"),
    copies: int = typer.Option(1, help="synth: degraded versions per photo"),
    direction: str = typer.Option("AtoB", help="aligned: which side is the input (AtoB | BtoA)"),
    scale: int = typer.Option(None, help="super-resolution LR/ + HR/ folders: HR size / LR size (default: the first "
                              "pair's); pairs of another ratio are skipped. synth: set by the spec's down:N"),
    size: int = typer.Option(256, help="resize shorter side then centre-crop to SIZE x SIZE (0 = keep each whole image); "
                             "super-resolution: the HR crop, the LR one is SIZE/N"),
    crops: int = typer.Option(0, help="cut N random SIZE x SIZE crops per photo instead of one centre crop (not with --size 0)"),
    val_fraction: float = typer.Option(0.1, help="share of source images held out for validation"),
    seed: int = typer.Option(0, help="seed for splits, crops and degradations (recorded in the manifest)"),
    shard_rows: int = typer.Option(256, help="rows per Parquet shard"),
    workers: int = typer.Option(2, help="parallel processes"),
    sample: bool = typer.Option(False, "--sample", help="ingest the sample photos bundled with scikit-image"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset of that name (it stays readable until the new one is complete)"),
):
    """Turn images into a dataset of pairs (resumable: re-run the same command after a crash).

    Example: `img2img data ingest --sample --name photos --degrade 'mix(gaussian:1.5,resize:4)' --crops 8 --size 96`
    """
    # deferred: imports pyarrow, torch (seconds of every CLI start)
    from jobs.data.ingest import IngestOptions, prepare, run

    if src is None and not sample:
        raise Img2ImgError("give a SRC folder or s3://bucket/prefix, or --sample for the bundled photos")
    if src is not None and sample:
        raise Img2ImgError("give either a SRC or --sample, not both")
    opts = IngestOptions(name=name, kind=kind, degrade=degrade, copies=copies,
                         direction=direction, scale=scale, size=size or None, crops=crops, val_fraction=val_fraction,
                         seed=seed, shard_rows=shard_rows)
    settings = get_settings()
    with console.status("checking the source and planning shards"):
        plan = prepare(src, opts, settings, overwrite=overwrite)  # every user mistake surfaces here
    with Progress(TextColumn("ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(name, total=plan.total_rows)
        try:
            result = run(plan, settings, workers=workers,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
        except KeyboardInterrupt:  # the workers are stopped already (jobs.data.ingest._build)
            bar.stop()
            kept = f"; dataset {name} was left as it was" if plan.replaces else ""
            err_console.print(f"Interrupted: re-run the same command to resume{kept}.", highlight=False, soft_wrap=True)
            _exit_now(130)
    m = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
    console.print(f"Dataset [bold]{m.name}[/] ({m.kind}): {counts} rows, {_size(m.total_bytes)}; "
                  f"{result.written} shards written, {result.reused} reused from an interrupted run.")
    _print_skipped(result.skipped)
    _print_notes(m)


def _print_notes(m) -> None:
    for note in m.notes():  # rows kept that teach little: sources smaller than the crop, flat pairs
        console.print(f"[yellow]Note:[/] {note}", highlight=False)


def _exit_now(code: int) -> NoReturn:
    """End the process at once, with nothing left to clean up: the interpreter's own teardown
    (torch is loaded) takes seconds on a busy machine, a frozen wait after Ctrl-C."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_skipped(skipped: list[dict[str, str]]) -> None:
    if skipped:
        console.print(f"[yellow]Skipped {len(skipped)} file(s):[/]")
        _print_skipped_list(skipped)


@data_app.command("ls")
def ls(as_json: bool = json_option()):
    """List datasets: name, kind, rows per split, size, created.

    Example: `img2img data ls --json`
    """
    # deferred: imports pyarrow (seconds of every CLI start)
    from registry.manifest import list_manifests

    manifests = list_manifests(Storage(get_settings()))
    if as_json:
        print_json([{"name": m.name, "kind": m.kind, "source_kind": m.source_kind, "counts": m.counts,
                     "bytes": m.total_bytes, "degradation": m.degradation, "skipped": len(m.skipped),
                     "created": m.created} for m in manifests])
        return
    rows = [[m.name, m.kind, ", ".join(f"{k} {v}" for k, v in m.counts.items()), _size(m.total_bytes),
             m.degradation or "-", m.created] for m in manifests]
    print_table("datasets", ["name", "kind", "rows", "size", "degradation", "created"], rows,
                ids=["name", "kind", "degradation"])


@data_app.command()
def show(name: str,
         preview: Path = typer.Option(None, help="write a PNG grid of a few pairs (or A / B images) here"),
         as_json: bool = json_option()):
    """Summarise a dataset's manifest (splits, shards, direction, skipped files); optionally
    write a labelled preview grid.

    Example: `img2img data show photos --preview pairs.png`
    """
    # deferred: imports pyarrow, torch (seconds of every CLI start)
    from jobs.data.browse import describe, direction_of, write_preview
    from registry.manifest import read_manifest

    if preview is not None:  # before any work: a bad path must not cost a download
        check_output_file(preview, "--preview", suffixes=(".png",))
    storage = Storage(get_settings())
    m = read_manifest(storage, name)
    direction = direction_of(m)
    if as_json:
        print_json(describe(m))
    else:
        console.print(f"[bold]{m.name}[/]  kind={m.kind} ({m.source_kind})  source={m.source}", highlight=False)
        console.print(f"created {m.created}  size={m.image_size}  scale={m.scale}  degradation={m.degradation}  seed={m.seed}"
                      + (f"  direction={direction} (input is the {direction[0]} side)" if direction else ""),
                      highlight=False)
        console.print(f"sha256 {m.sha256}", highlight=False)
        rows = [[split, s.path, s.rows, _size(s.bytes), s.sha256[:12]] for split, shards in m.splits.items()
                for s in shards]
        print_table("shards", ["split", "path", "rows", "size", "sha256 (start)"], rows, ids=["split", "path"])
        if m.skipped:
            console.print(f"{len(m.skipped)} source file(s) were skipped at ingest:")
            _print_skipped_list(m.skipped)
        _print_notes(m)
    if preview is not None:
        write_preview(storage, m, preview)
        (err_console if as_json else console).print(f"Preview written to {preview}", highlight=False)


def _print_skipped_list(skipped: list[dict[str, str]]) -> None:
    for s in skipped:
        console.print(f"  {s['file']}: {s['reason']}", markup=False, highlight=False)


@data_app.command()
def verify(name: str):
    """Recompute every shard's sha256 and row count against the manifest.

    Example: `img2img data verify photos`
    """
    # deferred: imports pyarrow, torch (seconds of every CLI start)
    from jobs.data.browse import verify_dataset

    n = verify_dataset(Storage(get_settings()), name)
    console.print(f"Dataset {name}: all {n} shards verified.")


@data_app.command()
def rm(name: str, yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")):
    """Delete a dataset (manifest first, so readers never see it half-deleted).

    Example: `img2img data rm photos -y`
    """
    # deferred: imports pyarrow, torch (seconds of every CLI start)
    from jobs.data.browse import delete_dataset
    from registry.manifest import read_manifest

    storage = Storage(get_settings())
    read_manifest(storage, name)  # a wrong name fails before the question
    if not yes:
        typer.confirm(f"Delete dataset {name}?", abort=True)
    n = delete_dataset(storage, name)
    console.print(f"Deleted dataset {name} ({n} objects).")
