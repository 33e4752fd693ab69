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


def test_expect_100_continue_requests_reach_the_app_with_their_body_unread(tmp_path):
    """Ray's rendered config gets, once however often the wrapper runs, the rule that keeps Serve
    from reading an `Expect: 100-continue` body ahead of the app (the app answers 413 first),
    and the real HAProxy accepts the config."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg=HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=8123)),
               config_file_path=str(cfg))._generate_config_file_internal()
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    wrapper = ingress.write_wrapper(tmp_path / "hap", str(fake), "127.0.0.1")
    for _ in range(2):  # a config file run through twice keeps one rule
        subprocess.run([str(wrapper), "-f", str(cfg)], check=True, timeout=30)
    text = cfg.read_text()
    frontend = text[text.index("frontend http_frontend"):].split("\nfrontend ")[0].split("\nbackend ")[0]
    assert text.count(ingress.EXPECT_RULE) == 1 and ingress.EXPECT_RULE in frontend
    binary = ingress.haproxy_binary()
    if binary:  # the Linux wheel of ray[serve] ships it
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "Configuration file is valid" in check.stdout, check.stderr
