"""`img2img demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli_utils import check_output_dir, console
from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from img2img_demo.tasks import DEFAULT_TASK, demo_task
from translator.catalog import variant_names


def demo(
    task: str = typer.Option(DEFAULT_TASK, help="deblur (blur/resize -> sharp, nafnet) | colorize (grey -> colour, "
                             "pix2pix) | sketch (line drawing -> photo, pix2pix) | restore (scratched -> clean, nafnet) | "
                             "upscale (4x super-resolution against bicubic, srvgg)"),
    variant: str = typer.Option(None, help=" | ".join(variant_names(paired=True)) + " (default: the task's; "
                                "another variant trains with its own defaults, not the task's recipe)"),
    quick: bool = typer.Option(False, "--quick", help="small dataset and a 2-minute training budget (CI)"),
    budget: float = typer.Option(None, help="training budget in seconds (default 300, quick 120)"),
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="where the grids and report go"),
):
    """The whole path on the embedded stack: stack up -> ingest -> train -> promote -> deploy -> enhance.

    Example: `img2img demo` (deblurring), `img2img demo --task colorize --quick`, or
    `img2img demo --variant autoencoder` to see the 2017 baseline. Tasks: deblur, colorize, sketch, restore.
    """
    the_task = demo_task(task)  # an unknown task: one line, before anything starts
    if variant is not None and variant not in variant_names(paired=True):
        raise Img2ImgError(f"unknown variant {variant!r} for the demo; use one of: "
                           f"{', '.join(variant_names(paired=True))}")
    if budget is not None and not budget > 0:
        raise Img2ImgError(f"--budget must be a positive number of seconds, got {budget:g}")
    # deferred: imports mlflow, ray, torch (seconds of every CLI start)
    from img2img_demo.run import run_demo

    check_output_dir(out, "--out")  # before minutes of training, not after
    settings = get_settings()
    result = run_demo(settings, variant=variant, quick=quick, out_dir=out, budget_s=budget, task=task,
                      say=lambda msg: console.print(f"[bold cyan]>[/] {msg}", highlight=False))
    m, inp, outp = result.mean, the_task.input_label, the_task.output_label
    console.print()
    console.print(f"[bold]Held-out photos:[/] {inp} {m['input_psnr']:.2f} dB / SSIM {m['input_ssim']:.3f}  ->  "
                  f"{outp} {m['output_psnr']:.2f} dB / SSIM {m['output_ssim']:.3f}")
    console.print(f"Report and {inp}|{outp}|original grids: {out}/report.md")
    console.print(f"MLflow UI:       {settings.mlflow_uri}")
    token = settings.ray_token_file()  # the dashboard asks for it ("Authentication Token Required")
    console.print(f"Ray dashboard:   {settings.ray_address}"
                  + (f"  (log in with the token in {token}; see docs/security.md)" if token else ""), highlight=False)
    console.print(f"Endpoint:        {settings.serve_url}/enhance")
    console.print(f"Web page:        {settings.serve_url}/  (drop a photo, compare before/after)")
    console.print("Next, try:")
    console.print(f"  curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {settings.serve_url}/enhance -o sharp.png")
    console.print("  img2img enhance my_photos/*.jpg -o sharp/")
    console.print(f"  img2img models ls {result.model}    img2img jobs ls    img2img serve status")
    # longer, as the demo trained
    console.print(f"  img2img train --dataset {result.dataset} {result.train_flags} --epochs 50 --follow",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
