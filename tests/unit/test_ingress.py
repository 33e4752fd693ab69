"""The HAProxy ingress set-up of the embedded stack: the wrapper keeps every HAProxy listener on
the stack's host, and the Ray environment gives each stack its own ports and files."""

import subprocess

import pytest

from cluster import ingress
from cluster.errors import Img2ImgError

# The bind lines of Ray 2.60's template (haproxy_templates.py), plus the other all-interfaces forms.
CONFIG = """global
    stats socket /x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
listen other
    bind 0.0.0.0:7000
    bind [::]:7001
"""


def test_wrapper_binds_every_listener_to_the_host_and_runs_the_binary_with_the_same_arguments(tmp_path):
    fake = tmp_path / "haproxy"  # records how it was called
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n')
    fake.chmod(0o755)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    wrapper = ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")
    subprocess.run([str(wrapper), "-db", "-f", str(cfg), "-sf", "123"], check=True, timeout=30)

    binds = [line.split()[1] for line in cfg.read_text().splitlines() if line.strip().startswith("bind")]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404", "127.0.0.1:7000", "127.0.0.1:7001"]
    assert "stats socket /x/admin.sock" in cfg.read_text()  # nothing else changed
    assert (tmp_path / "args").read_text().split() == ["-db", "-f", str(cfg), "-sf", "123"]


def test_wrapper_fails_when_the_config_cannot_be_rewritten(tmp_path):
    """A config it cannot rewrite must not start HAProxy on all interfaces."""
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    fake.chmod(0o755)
    wrapper = ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")
    done = subprocess.run([str(wrapper), "-f", str(tmp_path / "missing.cfg")], capture_output=True, timeout=30)
    assert done.returncode != 0 and not (tmp_path / "ran").exists()


def test_ray_env_gives_the_stack_its_own_ports_files_and_a_short_drain(tmp_path, monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    env = ingress.ray_env(tmp_path, "127.0.0.1", stats_port=40001, metrics_port=40002, fallback_ports=(40003, 40004),
                          replica_ports=(20196, 20255))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert [env[f"RAY_SERVE_{k}"] for k in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", "FALLBACK_PROXY_HTTP_PORT",
                                             "FALLBACK_PROXY_GRPC_PORT")] == ["40001", "40002", "40003", "40004"]
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == (
        "20196", "20255")
    paths = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 6 and all(p.startswith(str(tmp_path)) for p in paths)
    assert "/usr/sbin/haproxy" in (tmp_path / ingress.WRAPPER).read_text()
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < 30  # Ray's 30 s on every redeploy
    assert int(env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"]) >= 600  # a long request outlives a reload


def test_rays_own_rendered_config_ends_up_with_every_listener_on_the_host(tmp_path):
    """Ray's template as Ray renders it (HTTP and gRPC on): a Ray upgrade that binds a new
    listener, or in a form the rewrite does not know, fails here, not on a user's network."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions, gRPCOptions

    cfg = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg=HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=8123),
                                 grpc_options=gRPCOptions(port=9123, grpc_servicer_functions=["a.b:c"])),
               config_file_path=str(cfg))._generate_config_file_internal()
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    fake.chmod(0o755)
    subprocess.run([str(ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")), "-f", str(cfg)],
                   check=True, timeout=30)
    binds = [line.split()[1] for line in cfg.read_text().splitlines() if line.strip().startswith("bind")]
    assert len(binds) >= 4 and all(b.startswith("127.0.0.1:") for b in binds), binds  # + stats, metrics, gRPC
    assert (tmp_path / "ran").exists()


def test_wrapper_refuses_a_listener_it_cannot_put_on_the_host(tmp_path):
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    fake.chmod(0o755)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("frontend x\n    bind 10.1.2.3:80\n")  # an address no rewrite rule knows
    done = subprocess.run([str(ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")), "-f", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "not on the host of the stack" in done.stderr and not (tmp_path / "ran").exists()


def test_haproxys_dir_must_be_private_and_the_binary_is_never_a_wrapper(tmp_path, monkeypatch):
    """The wrapper Ray executes lives in this dir: a dir someone else could write to, or a
    symlink, is refused; and RAY_SERVE_HAPROXY_BINARY_PATH (which Ray's processes inherit,
    pointing at a wrapper) is not taken for the real binary."""
    import os

    made = ingress.private_dir(tmp_path / "hap")
    assert (made.stat().st_mode & 0o777) == 0o700 and ingress.private_dir(made) == made  # again: accepted
    (tmp_path / "open").mkdir(mode=0o777)
    os.chmod(tmp_path / "open", 0o777)
    (tmp_path / "link").symlink_to(made)
    for bad in ("open", "link"):
        with pytest.raises(Img2ImgError, match="not a private directory"):
            ingress.private_dir(tmp_path / bad)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(made / ingress.WRAPPER))
    assert ingress.WRAPPER not in (ingress.haproxy_binary() or "")


def test_resolve_falls_back_to_the_proxy_only_on_auto(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    assert ingress.resolve("auto") == "proxy" and ingress.resolve("proxy") == "proxy"
    with pytest.raises(Img2ImgError, match="IMG2IMG_SERVE_INGRESS=haproxy, but no HAProxy binary"):
        ingress.resolve("haproxy")
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert ingress.resolve("auto") == "haproxy" and ingress.resolve("proxy") == "proxy"


def rays_config_through_the_wrapper(tmp_path, runs: int = 1):
    """Ray's HTTP config as Ray renders it, run `runs` times through the stack's wrapper (with a
    binary that does nothing) -> the config file's path."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg=HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=8123)),
               config_file_path=str(cfg))._generate_config_file_internal()
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    wrapper = ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")
    for _ in range(runs):
        subprocess.run([str(wrapper), "-f", str(cfg)], check=True, timeout=30)
    return cfg


def test_expect_100_continue_requests_reach_the_app_with_their_body_unread(tmp_path):
    """Ray's rendered config gets, once however often the wrapper runs, the rule that keeps Serve
    from reading an `Expect: 100-continue` body ahead of the app (the app answers 413 first),
    and the real HAProxy accepts the config."""
    cfg = rays_config_through_the_wrapper(tmp_path, runs=2)  # a config file run through twice keeps one rule
    text = cfg.read_text()
    frontend = text[text.index("frontend http_frontend"):].split("\nfrontend ")[0].split("\nbackend ")[0]
    assert text.count(ingress.EXPECT_RULE) == 1 and ingress.EXPECT_RULE in frontend
    binary = ingress.haproxy_binary()
    if binary:  # the Linux wheel of ray[serve] ships it
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "Configuration file is valid" in check.stdout, check.stderr


def _rendered_defaults(tmp_path) -> list[str]:
    """The option, timeout and retry lines of Ray's rendered `defaults` section, after the
    wrapper has run over the config."""
    section = rays_config_through_the_wrapper(tmp_path).read_text().split("\ndefaults\n")[1].split("\nfrontend ")[0]
    return [ln.strip() for ln in section.splitlines()
            if ln.strip().startswith(("mode", "option", "no option", "timeout", "retry-on", "balance"))]


def test_rays_config_splices_no_request_body(tmp_path):
    lines = _rendered_defaults(tmp_path)
    assert "no option splice-request" in lines and "option splice-request" not in lines, lines
    assert "option abortonclose" in lines


@pytest.mark.skipif(not ingress.haproxy_binary(), reason="no HAProxy binary (ray[serve] ships one on Linux only)")
def test_a_client_that_leaves_after_sending_its_whole_request_at_once_is_seen_by_the_server(tmp_path):
    """The real HAProxy with Ray's defaults as the wrapper leaves them, in front of a server that
    reads a request and then waits: a client that sent its whole request (headers and a 45 kB
    body in one write, as a fast client on this host does) and goes away after 1 s must reach the
    server as a closed connection, which is what stops the replica's computation. With Ray's
    `option splice-request` HAProxy 2.8 missed it in most tries."""
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))
    seen: list[float] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 45000:
                    data += conn.recv(65536)
                t0 = time.monotonic()
                conn.settimeout(5)
                try:
                    conn.recv(1)  # b"" (a FIN) or a reset: the client's close, passed on
                    seen.append(time.monotonic() - t0)
                except TimeoutError:
                    seen.append(float("inf"))
                except OSError:
                    seen.append(time.monotonic() - t0)

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "front.cfg"
    cfg.write_text("global\n    nbthread 2\ndefaults\n" + "".join(f"    {ln}\n" for ln in _rendered_defaults(tmp_path))
                   + f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\nbackend b\n"
                   f"    server s 127.0.0.1:{server.getsockname()[1]}\n")
    proc = subprocess.Popen([ingress.haproxy_binary(), "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        request = (b"POST /enhance HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 45000\r\n\r\n"
                   + b"x" * 45000)
        for _ in range(3):
            before = len(seen)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(request)
                time.sleep(1)
            deadline = time.monotonic() + 10
            while len(seen) == before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(seen) > before and seen[-1] < 4, seen  # noticed within a few seconds, not at the timeout
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.close()
