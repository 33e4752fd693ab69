"""`img2img data ingest|ls|show|verify|rm`: datasets of image pairs on the object store."""

from __future__ import annotations

import io
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli_utils import console, handle_errors, table
from cluster.settings import get_settings
from cluster.storage import Storage

data_app = typer.Typer(help="Ingest, list, inspect, verify and delete datasets of image pairs.",
                       no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@data_app.command()
@handle_errors
def ingest(
    src: str = typer.Argument(None, help="local folder or s3://bucket/prefix (omit with --sample)"),
    name: str = typer.Option(..., "--name", "-n", help="dataset name"),
    kind: str = typer.Option("synth", help="synth (clean photos -> degraded pairs) | aligned | unaligned"),
    degrade: str = typer.Option("gaussian:1.5", help="synth degradation spec: gaussian:S, random_gaussian:LO-HI, resize:F, noise:STD, jpeg:Q, gray, "
                                 "edges[:S], holes:FRACTION, scratches:N, mix(a,b,..), chain(a,b,..); e.g. 'mix(gaussian:3,resize:4)'"),
    copies: int = typer.Option(1, help="synth: degraded versions per photo"),
    direction: str = typer.Option("AtoB", help="aligned: which side is the input (AtoB | BtoA)"),
    size: int = typer.Option(256, help="resize shorter side then centre-crop to SIZE x SIZE (0 = keep size)"),
    crops: int = typer.Option(0, help="cut N random SIZE x SIZE crops per photo instead of one centre crop"),
    val_fraction: float = typer.Option(0.1, help="share of source images held out for validation"),
    seed: int = typer.Option(0, help="seed for splits, crops and degradations (recorded in the manifest)"),
    shard_rows: int = typer.Option(256, help="rows per Parquet shard"),
    workers: int = typer.Option(2, help="parallel processes"),
    sample: bool = typer.Option(False, "--sample", help="ingest the sample photos bundled with scikit-image"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset of that name"),
):
    """Turn images into a dataset of pairs (resumable: re-run the same command after a crash).

    Example: `img2img data ingest --sample --name photos --degrade 'mix(gaussian:1.5,resize:4)' --crops 8 --size 96`
    """
    from cluster.errors import Img2ImgError
    from jobs.ingest import IngestOptions
    from jobs.ingest import ingest as run_ingest

    if (src is None) == (not sample):
        raise Img2ImgError("give a SRC folder / s3:// prefix, or --sample (not both)")
    opts = IngestOptions(name=name, kind=kind, degrade=degrade if kind == "synth" else None, copies=copies,
                         direction=direction, size=size or None, crops=crops, val_fraction=val_fraction,
                         seed=seed, shard_rows=shard_rows)
    with Progress(TextColumn("ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(name, total=None)
        result = run_ingest(src, opts, get_settings(), overwrite=overwrite, workers=workers,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    m = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
    console.print(f"Dataset [bold]{m.name}[/] ({m.kind}): {counts} rows, {_size(m.total_bytes)}; "
                  f"{result.written} shards written, {result.reused} reused from an interrupted run.")
    if result.skipped:
        console.print(f"[yellow]Skipped {len(result.skipped)} file(s):[/]")
        for s in result.skipped:
            console.print(f"  {s['file']}: {s['reason']}", markup=False)


@data_app.command("ls")
@handle_errors
def ls():
    """List datasets: name, kind, rows per split, size, created.

    Example: `img2img data ls`
    """
    from jobs.manifest import list_manifests

    rows = [[m.name, m.kind, ", ".join(f"{k} {v}" for k, v in m.counts.items()), _size(m.total_bytes),
             m.degradation or "-", m.created] for m in list_manifests(Storage(get_settings()))]
    console.print(table("datasets", ["name", "kind", "rows", "size", "degradation", "created"], rows))


@data_app.command()
@handle_errors
def show(name: str, preview: Path = typer.Option(None, help="write a PNG grid of a few pairs here")):
    """Summarise a dataset's manifest; optionally write a preview grid of pairs.

    Example: `img2img data show photos --preview pairs.png`
    """
    import pyarrow.parquet as pq

    from jobs.manifest import dataset_prefix, read_manifest
    from translator import images

    storage = Storage(get_settings())
    m = read_manifest(storage, name)
    console.print(f"[bold]{m.name}[/]  kind={m.kind} ({m.source_kind})  source={m.source}")
    console.print(f"created {m.created}  size={m.image_size}  degradation={m.degradation}  seed={m.seed}")
    console.print(f"sha256 {m.sha256}")
    rows = [[split, s.path, s.rows, _size(s.bytes), s.sha256[:12]] for split, shards in m.splits.items() for s in shards]
    console.print(table("shards", ["split", "path", "rows", "size", "sha256"], rows))
    if m.skipped:
        console.print(f"{len(m.skipped)} source file(s) were skipped at ingest.")
    if preview:
        shard = next(s for shards in m.splits.values() for s in shards if s.rows)
        t = pq.read_table(io.BytesIO(storage.get_bytes(dataset_prefix(name) + shard.path))).slice(0, 4).to_pylist()
        cols = ["input", "target"] if m.kind == "paired" else ["image"]
        grid = images.grid([[images.to_rgb(images.open_image(r[c])) for c in cols] for r in t])
        grid.save(preview)
        console.print(f"Preview written to {preview}")


@data_app.command()
@handle_errors
def verify(name: str):
    """Recompute every shard's sha256 and row count against the manifest.

    Example: `img2img data verify photos`
    """
    from cluster.errors import Img2ImgError
    from jobs.manifest import read_manifest, verify_shard

    storage = Storage(get_settings())
    m = read_manifest(storage, name)
    problems = [(s.path, err) for shards in m.splits.values() for s in shards
                if (err := verify_shard(storage, name, s))]
    if problems:
        raise Img2ImgError(f"dataset {name!r} is damaged: " + "; ".join(f"{p}: {e}" for p, e in problems))
    console.print(f"Dataset {name}: all {sum(len(v) for v in m.splits.values())} shards verified.")


@data_app.command()
@handle_errors
def rm(name: str, yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")):
    """Delete a dataset (manifest first, so readers never see it half-deleted).

    Example: `img2img data rm photos -y`
    """
    from jobs.manifest import dataset_prefix, manifest_key, read_manifest

    storage = Storage(get_settings())
    read_manifest(storage, name)
    if not yes:
        typer.confirm(f"Delete dataset {name}?", abort=True)
    storage.delete(manifest_key(name))
    n = storage.delete_prefix(dataset_prefix(name))
    console.print(f"Deleted dataset {name} ({n + 1} objects).")
