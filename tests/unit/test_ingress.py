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
    env = ingress.ray_env(tmp_path, "127.0.0.1", 40001, 40002, (20192, 20255))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("40001", "40002")
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == (
        "20192", "20255")
    paths = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 6 and all(p.startswith(str(tmp_path)) for p in paths)
    assert "/usr/sbin/haproxy" in (tmp_path / ingress.WRAPPER).read_text()
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < 30  # Ray's 30 s on every redeploy
    assert int(env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"]) >= 600  # a long request outlives a reload


def test_resolve_falls_back_to_the_proxy_only_on_auto(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    assert ingress.resolve("auto") == "proxy" and ingress.resolve("proxy") == "proxy"
    with pytest.raises(Img2ImgError, match="IMG2IMG_SERVE_INGRESS=haproxy, but no HAProxy binary"):
        ingress.resolve("haproxy")
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert ingress.resolve("auto") == "haproxy" and ingress.resolve("proxy") == "proxy"
