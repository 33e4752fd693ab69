"""`img2img models ls|promote|rollback|export`: the MLflow model registry."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli_utils import console, handle_errors, json_option, print_json, print_table
from cluster.settings import get_settings

models_app = typer.Typer(help="List registered models, promote a version to champion, roll back.",
                         no_args_is_help=True)


def _fmt(v, key):
    x = v.metric(key)
    return "-" if x is None else f"{x:.4f}" if "ssim" in key else f"{x:.2f}"


@models_app.command("ls")
@handle_errors
def ls(name: str = typer.Argument(None, help="one registered model (default: all)"),
       as_json: bool = json_option()):
    """Registered models and versions with variant, dataset, val PSNR/SSIM, gain, aliases.

    Example: `img2img models ls photos --json`
    """
    from jobs.registry import versions

    found = versions(get_settings(), name)
    if as_json:
        print_json([{"model": v.name, "version": v.version, "variant": v.tags.get("variant"),
                     "dataset": v.tags.get("dataset"), "val_psnr": v.metric("val_psnr"),
                     "val_ssim": v.metric("val_ssim"), "val_gain_db": v.metric("val_gain_db"),
                     "aliases": v.aliases, "run_id": v.run_id, "created": v.created} for v in found])
        return
    rows = [[v.name, v.version, v.tags.get("variant", "-"), v.tags.get("dataset", "-"), _fmt(v, "val_psnr"),
             _fmt(v, "val_ssim"), _fmt(v, "val_gain_db"), ",".join(v.aliases), v.run_id, v.created]
            for v in found]
    print_table("registered models", ["model", "version", "variant", "dataset", "val PSNR", "val SSIM",
                                      "gain dB", "aliases", "run", "created"], rows,
                ids=["model", "version", "variant", "dataset", "aliases", "run"])


@models_app.command()
@handle_errors
def promote(
    name: str,
    version: str = typer.Argument(None, help="version to promote (or use --best)"),
    best: bool = typer.Option(False, "--best", help="promote the best version by --metric"),
    metric: str = typer.Option("val_psnr", help="metric tag to compare (higher is better)"),
    force: bool = typer.Option(False, "--force", help="promote even if worse than the champion"),
):
    """Set the alias `champion` on a version; the old champion becomes `previous`.

    Example: `img2img models promote photos --best`
    """
    from jobs.registry import promote as do_promote

    settings = get_settings()
    new, old = do_promote(settings, name, version, best=best, metric=metric, force=force)
    console.print(f"{name}: champion is now v{new}" + (f" (previous: v{old})" if old else ""))
    console.print(f"Swap it into the running endpoint with: img2img serve reload --model {name}@champion")


@models_app.command()
@handle_errors
def rollback(name: str):
    """Move `champion` back to the `previous` version.

    Example: `img2img models rollback photos`
    """
    from jobs.registry import rollback as do_rollback

    settings = get_settings()
    new, old = do_rollback(settings, name)
    console.print(f"{name}: champion rolled back to v{new} (v{old} is now previous)")
    console.print(f"Swap it into the running endpoint with: img2img serve reload --model {name}@champion")


@models_app.command()
@handle_errors
def export(
    model: str = typer.Argument(..., help="NAME@champion, NAME@alias, NAME/VERSION or NAME"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript"),
    out: Path = typer.Option(None, "-o", "--out", help="output file (default: ./NAME-vVERSION.onnx or .pt)"),
    tolerance: float = typer.Option(1e-3, help="refuse the export above this max abs difference "
                                               "from PyTorch ([-1, 1] scale)"),
    no_log: bool = typer.Option(False, "--no-log", help="do not log the file to the registry"),
):
    """Export a registered generator to ONNX or TorchScript (dynamic batch, height and width),
    checked against PyTorch on three input sizes, and log the file to the model version.

    Example: `img2img models export photos@champion --format onnx -o photos.onnx`
    """
    from jobs.export import export_model

    with console.status(f"exporting {model} to {fmt} and checking it against PyTorch"):
        r = export_model(get_settings(), model, fmt, out, tolerance, log_to_registry=not no_log)
    sizes = ", ".join(f"{k}: {v:.1e}" for k, v in r["per_size"].items())
    console.print(f"Exported {r['name']} v{r['version']} to {r['path']} ({r['format']}, dynamic batch/height/width)",
                  markup=False)
    console.print(f"Max abs difference from PyTorch: {r['max_abs_diff']:.1e} (tolerance {r['tolerance']:.0e}; "
                  f"per NxHxW input: {sizes})", markup=False)
    if r["artifact"]:
        console.print(f"Logged as artifact {r['artifact']} of run {r['run_id'][:12]} "
                      f"(tag export_{r['format']} on v{r['version']})", markup=False)
