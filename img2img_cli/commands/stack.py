"""`img2img stack up|down|status|logs`: the embedded S3 store, MLflow server and Ray head."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cluster.cli_utils import console, json_option, print_json, print_table
from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.stack import SERVICES, Stack, list_nodes
from cluster.stack_expose import exposure_lines, validate_host

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


def _exposed(settings: Settings, url: str) -> dict[str, str]:
    """{"host", "exposed_url"} for a service of a stack exposed with `stack up --host`, else {}."""
    host = settings.exposed_host()
    if not host or not settings.is_local(url):
        return {}
    return {"host": host, "exposed_url": settings.exposed(url)}


def _print_status(statuses, as_json: bool = False, nodes: list | None = None) -> None:
    settings = get_settings()
    access = dashboard_access(settings)
    if as_json:
        print_json([{"service": s.name, "url": s.url, "pid": s.pid, "healthy": s.healthy, "managed": s.managed,
                     "mode": s.detail, **_exposed(settings, s.url),
                     **({"dashboard_token_file": access["token_file"],
                         "nodes": [n.to_dict() for n in nodes or []]} if s.name == "ray" else {})}
                    for s in statuses])
        return
    rows = [[s.name, s.url, s.pid or "-", "[green]yes[/]" if s.healthy else "[red]no[/]", s.detail]
            for s in statuses]
    print_table("img2img stack", ["service", "url", "pid", "healthy", "mode"], rows, ids=["service", "url"])
    console.print(access["how"] + ".", markup=False, highlight=False, soft_wrap=True)
    host = settings.exposed_host()
    if host:
        console.print(f"Exposed on {host}: other machines join with `img2img stack join --head "
                      f"{settings.exposed(settings.ray_address)}` (docs/adding-machines.md)",
                      markup=False, highlight=False, soft_wrap=True)


@stack_app.command()
def up(host: str = typer.Option(None, "--host", help="also expose the stack on this IPv4 address of this machine "
                                "(e.g. 10.0.0.5), every service authenticated: see docs/adding-machines.md")):
    """Start every local service that is not running yet and wait until each is healthy. With
    --host ADDR, other machines reach Ray, S3 and MLflow at ADDR (token, access keys, basic auth);
    the lines printed say what listens where.

    Example: `IMG2IMG_STATE_DIR=/tmp/i2i img2img stack up`
    """
    if host is not None:
        host = validate_host(host)
    stack = Stack(get_settings())
    with console.status("starting the stack") as spinner:
        statuses = stack.up(progress=lambda msg: spinner.update(msg), host=host)
    _print_status(statuses)
    if host:
        console.print(f"What --host {host} exposes:", markup=False, highlight=False)
        for line in exposure_lines(stack.settings, host, stack._load().get("ports", {}).get("gcs")):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
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


def _nodes(url: str, headers: dict) -> list:
    try:
        return list_nodes(url, headers)
    except Img2ImgError:
        return []


def _print_nodes(nodes: list) -> None:
    rows = [[n.node_id[:12], n.ip, "head" if n.head else "worker", f"{n.cpus:g}", f"{n.gpus:g}", n.workers,
             n.describe_running(), "[green]alive[/]" if n.alive else "[red]dead[/]"] for n in nodes]
    print_table("Ray nodes", ["node", "ip", "role", "CPUs", "GPUs", "actors", "running", "state"], rows,
                ids=["node"])


@stack_app.command()
def status(as_json: bool = json_option()):
    """Show each service (url, pid, health, embedded or external) and the Ray nodes (CPUs, GPUs,
    what runs on each, alive or dead); exit 1 if a service is unhealthy. In a state dir that `stack join`ed a head:
    this node and the head's nodes.

    Example: `img2img stack status --json`
    """
    settings = get_settings()
    stack = Stack(settings)
    node = stack.joined()
    if node is not None:
        nodes = _nodes(node["head"], settings.ray_auth_headers())
        if as_json:
            print_json({"joined": node, "nodes": [n.to_dict() for n in nodes]})
        else:
            console.print(f"This state dir runs a worker node ({node['cpus']} CPUs, {node['gpus']} GPUs) joined to "
                          f"{node['head']}", markup=False, highlight=False, soft_wrap=True)
            _print_nodes(nodes)
        if not nodes:
            raise Img2ImgError(f"the head at {node['head']} does not answer")
        return
    statuses = stack.status()
    ray_ok = next(s.healthy for s in statuses if s.name == "ray")
    nodes = _nodes(settings.ray_address, settings.ray_auth_headers()) if ray_ok else []
    _print_status(statuses, as_json, nodes)
    if not as_json and nodes:
        _print_nodes(nodes)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@stack_app.command()
def join(head: str = typer.Option(..., "--head", help="the head's Ray dashboard URL, as its `stack status` prints it"),
         num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs this node offers (default: all of the machine's)"),
         gpus: int = typer.Option(0, "--gpus", help="GPUs this node offers"),
         token_file: Path = typer.Option(None, "--token-file", help="file with the head's Ray token "
                                         "(default: $RAY_AUTH_TOKEN)"),
         node_ip: str = typer.Option(None, "--node-ip", help="this machine's address the others reach it at "
                                     "(default: 127.0.0.1 for a head on this machine, else Ray's guess)")):
    """Start a Ray worker node under this state dir that joins a head, so its jobs can use this
    machine's CPUs/GPUs. Needs the head's token and the S3 store's keys (IMG2IMG_S3_ACCESS_KEY,
    IMG2IMG_S3_SECRET_KEY); for a head started with `stack up --host`, also its MLflow user and
    password (IMG2IMG_MLFLOW_USERNAME, IMG2IMG_MLFLOW_PASSWORD) for the jobs' processes on this node.

    Example: `IMG2IMG_STATE_DIR=/tmp/node2 img2img stack join --head http://127.0.0.1:8265 --num-cpus 2 --token-file ~/.local/state/img2img/ray/auth_token`
    """
    stack = Stack(get_settings())
    with console.status(f"joining {head}"):
        node = stack.join(head, num_cpus, gpus, token_file, node_ip)
    console.print(f"Joined {head} (GCS {node['gcs']}) with {node['cpus']} CPUs and {node['gpus']} GPUs; "
                  f"`img2img stack leave` stops this node. State and logs: {stack.root}",
                  markup=False, highlight=False, soft_wrap=True)


@stack_app.command()
def leave():
    """Stop the worker node this state dir started with `stack join` (only its own processes;
    jobs with workers on it continue from their last checkpoint where the rest can hold them).

    Example: `IMG2IMG_STATE_DIR=/tmp/node2 img2img stack leave`
    """
    stack = Stack(get_settings())
    if stack._load().get("node") is None:
        raise Img2ImgError(f"this state dir ({stack.root}) has not joined a head (`img2img stack join --head URL`)")
    with console.status("stopping this node"):
        stopped = stack.leave()
    console.print("Left the cluster; this node is stopped." if stopped else "This node was not running any more.")


@stack_app.command()
def logs(service: str = typer.Argument(..., help=f"one of {', '.join(SERVICES)}"),
         lines: int = typer.Option(50, "--lines", "-n", help="how many lines from the end")):
    """Print the end of a service's log.

    Example: `img2img stack logs mlflow -n 100`
    """
    if lines < 1:  # `[-0:]` is the whole file: -n 0 printed every line
        raise Img2ImgError(f"--lines must be at least 1, got {lines}")
    console.print(Stack(get_settings()).tail(service, lines), markup=False, highlight=False)
