"""`img2img models ls|promote|rollback`: the MLflow model registry."""

from __future__ import annotations

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
