"""`img2img stack up|down|status|logs`: the embedded S3 store, MLflow server and Ray head."""

from __future__ import annotations

import os

import typer

from cluster.cli_utils import console, json_option, print_json, print_table
from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.stack import SERVICES, Stack

stack_app = typer.Typer(help="Start, stop and inspect the embedded stack (S3 store, MLflow, Ray head).",
                        no_args_is_help=True)


def dashboard_access(settings: Settings) -> dict[str, str | None]:
    """How to open the Ray dashboard, which token authentication locks (Ray 2.60: every request
    but the page itself needs the token, as `Authorization: Bearer TOKEN`, or the
    `ray-authentication-token` cookie the page's "Authentication Token Required" dialog sets).
    -> {"url", "token_file", "how"}; the token itself is never printed (`how` says where it is)."""
    url, token_file = settings.ray_address, settings.ray_token_file()
    if token_file is not None:
        how = (f"Ray dashboard {url} asks for a token: paste the contents of {token_file} into its "
               f"\"Authentication Token Required\" dialog (print it with `RAY_AUTH_TOKEN_PATH={token_file} ray "
               f"get-auth-token`); API clients send the header \"Authorization: Bearer <that token>\"")
    elif os.environ.get("RAY_AUTH_TOKEN"):
        how = f"Ray dashboard {url} takes the token in $RAY_AUTH_TOKEN (paste it into its login dialog)"
    else:
        how = f"Ray dashboard {url}: no token known to this stack (`img2img stack up` makes one)"
    return {"url": url, "token_file": str(token_file) if token_file else None, "how": how}


def _print_status(statuses, as_json: bool = False) -> None:
    access = dashboard_access(get_settings())
    if as_json:
        print_json([{"service": s.name, "url": s.url, "pid": s.pid, "healthy": s.healthy, "managed": s.managed,
                     "mode": s.detail, **({"dashboard_token_file": access["token_file"]} if s.name == "ray" else {})}
                    for s in statuses])
        return
    rows = [[s.name, s.url, s.pid or "-", "[green]yes[/]" if s.healthy else "[red]no[/]", s.detail]
            for s in statuses]
    print_table("img2img stack", ["service", "url", "pid", "healthy", "mode"], rows, ids=["service", "url"])
    console.print(access["how"] + ".", markup=False, highlight=False, soft_wrap=True)


@stack_app.command()
def up():
    """Start every local service that is not running yet and wait until each is healthy.

    Example: `IMG2IMG_STATE_DIR=/tmp/i2i img2img stack up`
    """
    stack = Stack(get_settings())
    with console.status("starting the stack") as spinner:
        statuses = stack.up(progress=lambda msg: spinner.update(msg))
    _print_status(statuses)
    console.print(f"State, logs and data: {stack.root}")


@stack_app.command()
def down():
    """Stop the services this stack started (data stays; `up` brings it back).

    Example: `img2img stack down`
    """
    stack = Stack(get_settings())
    with console.status("stopping the stack") as spinner:
        stopped = stack.down(progress=lambda msg: spinner.update(msg))
    console.print(f"Stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command()
def status(as_json: bool = json_option()):
    """Show each service: url, pid, health, embedded or external (exit 1 if one is unhealthy).

    Example: `img2img stack status --json`
    """
    statuses = Stack(get_settings()).status()
    _print_status(statuses, as_json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@stack_app.command()
def logs(service: str = typer.Argument(..., help=f"one of {', '.join(SERVICES)}"),
         lines: int = typer.Option(50, "--lines", "-n", help="how many lines from the end")):
    """Print the end of a service's log.

    Example: `img2img stack logs mlflow -n 100`
    """
    if lines < 1:  # `[-0:]` is the whole file: -n 0 printed every line
        raise Img2ImgError(f"--lines must be at least 1, got {lines}")
    console.print(Stack(get_settings()).tail(service, lines), markup=False, highlight=False)
