"""`img2img serve deploy|reload|status|rm` and `img2img enhance`."""

from __future__ import annotations

import inspect
import math
import typing
from pathlib import Path
from urllib.parse import urlparse

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli_utils import (
    check_output_dir,
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)
from cluster.errors import Img2ImgError
from cluster.files import make_output_dir
from cluster.settings import get_settings
from img2img_cli.commands import rollout as rollout_commands
from registry.refs import parse_ref, resolve
from serving.client import RetryPolicy, enhance_files
from serving.deploy import deploy as do_deploy
from serving.deploy import redeploy_model, remove
from serving.deploy import status as get_status
from serving.inputs import check_outputs, collect
from serving.options import DEFAULTS, Options, ReplicaOptions, Scaling

serve_app = typer.Typer(help="Deploy, reload, inspect and remove the Ray Serve enhancement endpoint.",
                        no_args_is_help=True)


def takes_options(*types: type[Options]):
    """Decorator: the command's `**options` become one Typer option per field of `types`
    (serving/options.py: each field's Flag gives the option's name, help and unit, the field
    its default), so `serve deploy` offers every option the types declare and no other."""
    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = []
        for t in types:
            for name, flag in t.flags().items():
                field = t.model_fields[name]
                kind = next((a for a in typing.get_args(field.annotation) if a is not type(None)), field.annotation)
                kind = float if flag.scale != 1 else kind if kind in (int, float) else str
                default = None if field.default is None else field.default * flag.scale if flag.scale != 1 else field.default
                added.append(inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                               default=typer.Option(default, flag.name, help=flag.help)))
        fn.__signature__ = sig.replace(parameters=[*own, *added])
        fn.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in added}}
        return fn
    return wrap


@serve_app.command()
@takes_options(Scaling, ReplicaOptions)
def deploy(model: str = typer.Option(..., "--model", "-m", help="NAME@champion, NAME@alias or NAME/VERSION"),
           **options):
    """Deploy (or update) the `enhancer` app serving a registered model; waits until it answers.

    Example: `img2img serve deploy --model photos@champion --max-replicas 2 --runtime onnx`
    """
    parse_ref(model)
    scaling, replica = Scaling.from_flags(options), ReplicaOptions.from_flags(options)
    with console.status("deploying the enhancer (first start takes ~30 s)"):
        out = do_deploy(get_settings(), model, replica, scaling)
    console.print(f"Serving {out['model']} v{out['version']} at {out['url']}/enhance "
                  f"({out['runtime']}, {out['threads']} thread(s) per replica)")
    console.print(f"Requests time out after {out['request_timeout_s']:.0f} s (JSON 504); planned replica stops "
                  f"wait up to {out['graceful_shutdown_timeout_s']:.0f} s for requests in flight.")
    if out.get("declared_by_another"):
        console.print("Another client deployed the same model and options meanwhile; its declaration is the "
                      "one in force.")
    console.print(f"Web page (drop a photo, compare before/after): {out['url']}/")
    console.print(f"Try: curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' {out['url']}/enhance -o out.png")


@serve_app.command()
def reload(model: str = typer.Option(..., "--model", "-m", help="NAME@champion or NAME/VERSION")):
    """Swap the served model without downtime (after `models promote` or `rollback`).

    Example: `img2img serve reload --model photos@champion`
    """
    parse_ref(model)
    with console.status("loading the model into the running replicas"):
        out = redeploy_model(get_settings(), model)
    console.print(f"Now serving {out['model']} v{out['version']}")


@serve_app.command()
def status(as_json: bool = json_option()):
    """Show the app: status, replicas, autoscaling, model version, URL.

    Example: `img2img serve status --json`
    """
    settings = get_settings()
    st = get_status(settings)
    if st is None:
        raise Img2ImgError("no enhancer app is deployed; deploy one with: img2img serve deploy --model NAME@champion")
    a = st["autoscaling"]
    champion = champion_version(settings, st["model"])
    if as_json:
        print_json({"deployment": "enhancer/Enhancer", "status": st["status"], "replicas": st["replicas"],
                    "autoscaling": {k: a.get(k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests")},
                    "model": st["model"], "version": st["version"], "champion_version": champion,
                    "serves_champion": None if champion is None else str(st["version"]) == champion,
                    "url": st["url"], "page": st["url"] + "/"})
        return
    rows = [["enhancer/Enhancer", st["status"], st["replicas"],
             f"{a.get('min_replicas')}-{a.get('max_replicas')} @ {a.get('target_ongoing_requests')}",
             f"{st['model']} v{st['version']}", st["url"]]]
    print_table("serve", ["deployment", "status", "replicas", "autoscaling", "model", "url"], rows,
                ids=["deployment", "status", "model", "url"])
    console.print(f"Web page: {st['url']}/")
    if champion is not None and str(st["version"]) != champion:
        err_console.print(f"[bold yellow]Warning:[/] {st['model']} v{st['version']} is no longer the champion "
                          f"(champion: v{champion}); swap it in with: img2img serve reload --model {st['model']}@champion",
                          highlight=False)
    if st.get("request_timeout_s") is not None:
        console.print(f"request time limit {st['request_timeout_s']:.0f} s; graceful shutdown "
                      f"{st.get('graceful_shutdown_timeout_s') or 20:.0f} s")


def champion_version(settings, model: str | None) -> str | None:
    """The version `model`'s alias `champion` names, or None (no champion, or MLflow unreachable:
    status still shows what is served)."""
    if not model:
        return None
    try:
        return resolve(settings.mlflow_uri, f"{model}@champion")[1]
    except Img2ImgError:
        return None


@serve_app.command()
def rm():
    """Remove the enhancer app (other Serve apps stay).

    Example: `img2img serve rm`
    """
    console.print("Removed the enhancer app." if remove(get_settings()) else "No enhancer app was deployed.")


def enhance(
    files: list[Path] = typer.Argument(..., help="images, or folders (recursed; outputs keep their sub-folders)"),
    out: Path = typer.Option(Path("enhanced"), "-o", "--out", help="output folder"),
    url: str = typer.Option(None, help="endpoint (default: IMG2IMG_SERVE_URL)"),
    fmt: str = typer.Option("png", "--format", help="png | jpeg | webp | tiff (16-bit inputs stay 16-bit in png/tiff; float and 32-bit ones need tiff)"),
    parallel: int = typer.Option(4, help="requests in flight"),
    local: bool = typer.Option(False, "--local", help="run the model here, without Serve"),
    model: str = typer.Option(None, "--model", "-m", help="with --local: NAME@champion or NAME/VERSION"),
    runtime: str = typer.Option(DEFAULTS.runtime, help="with --local: auto (as serve deploy: per image size on CPU, torch on GPU) | torch | onnx"),
    threads: int = typer.Option(None, help="with --local: intra-op threads (default: all CPUs)"),
    max_megapixels: float = typer.Option(None, help=f"with --local: larger images fail, checked from their header "
                                         f"before the model loads (default {DEFAULTS.max_pixels / 1e6:.0f}; the "
                                         "endpoint's limit is set by `serve deploy --max-megapixels`)"),
    direction: str = typer.Option("AtoB", help="AtoB | BtoA (BtoA: unpaired cyclegan/dualgan models only)"),
    retries: int = typer.Option(5, help="retries per image after a connection error or HTTP 500/502/503/504"),
    timeout: float = typer.Option(None, help="seconds to wait for each answer (default: the endpoint's "
                                                  "request time limit + 60 s, from GET /model)"),
):
    """Enhance images through the endpoint (or in-process with --local). Folders are recursed and
    the outputs keep each image's path under -o; files that are not images (by suffix) or hidden
    are skipped and listed. Failures of the service (a replica restarting) are retried with
    backoff; each file's outcome is listed. Exit 0 when every image was enhanced, 1 when any failed.

    Example: `img2img enhance myphotos/ -o sharp/`  or
    `img2img enhance blurry/*.jpg --local --model photos@champion --runtime onnx`
    """
    if direction not in ("AtoB", "BtoA"):
        raise Img2ImgError(f"--direction must be AtoB or BtoA, not {direction!r}")
    if retries < 0:
        raise Img2ImgError("--retries must be >= 0")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise Img2ImgError(f"--timeout must be a finite number of seconds > 0, got {timeout}")
    if parallel < 1 or (threads is not None and threads < 1):
        raise Img2ImgError("--parallel and --threads must be at least 1")
    # deferred, as registry.loading and serving.local below: they import torch (and MLflow), which
    # every other img2img command would load at start for nothing
    from translator.codec import FORMATS

    if max_megapixels is not None and not local:  # a limit typed must not be silently ignored
        raise Img2ImgError("--max-megapixels goes with --local; the endpoint's limit is set by: "
                           "img2img serve deploy --model NAME@champion --max-megapixels N")
    max_megapixels = DEFAULTS.max_pixels / 1e6 if max_megapixels is None else max_megapixels
    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        raise Img2ImgError(f"--max-megapixels must be a finite number > 0, got {max_megapixels}")
    settings = get_settings()
    inputs = collect(files, out)  # every mistake is reported before the first request, once
    if fmt.lower() not in FORMATS:
        raise Img2ImgError(f"unsupported --format {fmt!r}: use png, jpeg, webp or tiff")
    if model is not None and not local:
        raise Img2ImgError("--model goes with --local; the endpoint serves the model it was deployed with")
    if local and model is None:
        raise Img2ImgError("--local needs --model NAME@champion (or NAME/VERSION)")
    if model is not None:
        parse_ref(model)
    check_output_dir(out, "-o/--out")
    check_outputs(inputs.files, out, fmt, inputs.root)  # two inputs named alike would overwrite each other's output
    files = inputs.files
    if local:
        resolve(settings.mlflow_uri, model)  # an unknown model or alias fails here, before any progress
    else:
        target = urlparse(url or settings.serve_url)
        if target.scheme not in ("http", "https") or not target.hostname:  # else 6 retries of a URL that can't work
            raise Img2ImgError(f"{'--url' if url else 'IMG2IMG_SERVE_URL'} must be an http(s) URL such as "
                               f"http://127.0.0.1:8000, got {url or settings.serve_url!r}")
    make_output_dir(out)  # before the progress bar: /proc/x, a read-only disk
    with Progress(TextColumn("enhance"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("enhance", total=len(files))
        done = lambda o: bar.advance(task)  # noqa: E731
        if local:
            # deferred: imports torch (seconds of every CLI start)
            from serving.local import enhance_locally

            results = enhance_locally(settings, model, files, out, fmt, on_done=done, direction=direction,
                                      runtime=runtime, threads=threads, root=inputs.root,
                                      max_pixels=int(max_megapixels * 1_000_000))
        else:
            key = settings.serve_api_key.get_secret_value() if settings.serve_api_key else None
            results = enhance_files(files, out, url or settings.serve_url, fmt, key, parallel, on_done=done,
                                    direction=None if direction == "AtoB" else direction,
                                    policy=RetryPolicy(attempts=retries + 1), timeout=timeout, root=inputs.root)
    failed = [r for r in results if r.error]
    for r in results:
        console.print(r.describe(), markup=False)
    for s in inputs.skipped:
        console.print(f"{s['file']} -> skipped: {s['reason']}", markup=False)
    skipped = f"; skipped {len(inputs.skipped)} file(s) (listed above)" if inputs.skipped else ""
    if failed:
        raise Img2ImgError(f"{len(failed)} of {len(results)} image(s) failed{skipped}")
    console.print(f"Enhanced {len(results)} image(s) into {out}{skipped}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
    app.command("enhance")(enhance)


rollout_commands.add_to(serve_app)
