"""`img2img demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli_utils import check_output_dir, console, handle_errors
from cluster.settings import get_settings
from translator.catalog import DEFAULT_VARIANT, variant_names


@handle_errors
def demo(
    variant: str = typer.Option(DEFAULT_VARIANT, help=" | ".join(variant_names(paired=True))),
    quick: bool = typer.Option(False, "--quick", help="small dataset and a 2-minute training budget (CI)"),
    budget: float = typer.Option(None, help="training budget in seconds (default 300, quick 120)"),
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="where the grids and report go"),
):
    """The whole path on the embedded stack: stack up -> ingest -> train -> promote -> deploy -> enhance.

    Example: `img2img demo` (or `img2img demo --variant autoencoder` to see the 2017 baseline)
    """
    from img2img_demo.run import run_demo

    check_output_dir(out, "--out")  # before minutes of training, not after
    settings = get_settings()
    result = run_demo(settings, variant=variant, quick=quick, out_dir=out, budget_s=budget,
                      say=lambda msg: console.print(f"[bold cyan]>[/] {msg}", highlight=False))
    m = result.mean
    console.print()
    console.print(f"[bold]Held-out photos:[/] blurred {m['blurred_psnr']:.2f} dB / SSIM {m['blurred_ssim']:.3f}  ->  "
                  f"enhanced {m['enhanced_psnr']:.2f} dB / SSIM {m['enhanced_ssim']:.3f}")
    console.print(f"Report and before|after|original grids: {out}/report.md")
    console.print(f"MLflow UI:       {settings.mlflow_uri}")
    console.print(f"Ray dashboard:   {settings.ray_address}")
    console.print(f"Endpoint:        {settings.serve_url}/enhance")
    console.print("Next, try:")
    console.print(f"  curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {settings.serve_url}/enhance -o sharp.png")
    console.print("  img2img enhance my_photos/*.jpg -o sharp/")
    console.print(f"  img2img models ls {result.model}    img2img jobs ls    img2img serve status")
    console.print(f"  img2img train --dataset {result.dataset} --epochs 50 --follow")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
