"""The embedded stack: SeaweedFS (S3 API), an MLflow server and a Ray head, as real processes
on 127.0.0.1 under `IMG2IMG_STATE_DIR`.

Ports users talk to come from the settings; internal ports are chosen free once and recorded
in `stack.json`, so two stacks with different state dirs run side by side. Services whose
settings point to another host (a real MinIO, a remote MLflow or Ray) are only checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.files import write_atomic
from cluster.services import http_status, poll_until
from cluster.settings import Settings, get_settings
from cluster.stack_expose import StackExpose
from cluster.stack_join import StackJoin, list_nodes  # noqa: F401  (re-exported)
from cluster.stack_start import BIN, WORKER_PORTS, StackStart, free_port, port_free  # noqa: F401  (re-exported)
from cluster.stack_stop import RAY_COMMAND, StackStop  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
SERVICES = ("s3", "mlflow", "ray")


@dataclass
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    healthy: bool
    managed: bool  # started by this stack (vs. pointed elsewhere)
    detail: str = ""


def _http_ok(url: str, headers: dict | None = None, timeout: float = 2.0) -> bool:
    return http_status(url, headers, timeout) == 200


class Stack(StackStart, StackStop, StackJoin, StackExpose):
    """The embedded stack under one state dir: its recorded state, health, `up`, `down`
    (cluster/stack_stop.py), status and logs; starting each service: cluster/stack_start.py;
    exposing it on one more address: cluster/stack_expose.py."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.root = self.settings.state_path
        self.logs = self.root / "logs"
        self.state_file = self.root / "stack.json"

    # ---- recorded state ---------------------------------------------------------------------
    def _load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"ports": {}, "pids": {}}

    def _save(self, state: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, json.dumps(state, indent=2))

    def _ports(self, state: dict, names: list[str]) -> dict[str, int]:
        """Internal ports: reuse the recorded ones while free, else pick new free ones."""
        ports = state.setdefault("ports", {})
        taken = set(ports.values())
        for name in names:
            if name not in ports or not port_free(ports[name]):
                port = free_port()
                while port in taken:  # nothing holds a port picked earlier: the OS may hand it out again
                    port = free_port()
                ports[name] = port
                taken.add(port)
        return {n: ports[n] for n in names}

    def gcs_address(self) -> str | None:
        """`host:port` of the embedded Ray head's GCS (for `ray.init` from this machine)."""
        state = self._load()
        port = state.get("ports", {}).get("gcs")
        return f"{state.get('host') or '127.0.0.1'}:{port}" if port else None

    @property
    def tmp_dir(self) -> Path:
        """TMPDIR of every process the stack starts (SeaweedFS's logs and unix sockets, MLflow's
        and the jobs' temp files): under the state dir, emptied by `stack down`."""
        return self.root / "tmp"

    @property
    def ray_temp_dir(self) -> Path:
        """The running head's temp dir as recorded at its start (older stacks used /tmp), else
        where a new head would put it."""
        recorded = self._load().get("ray_temp_dir")
        return Path(recorded) if recorded else self._new_ray_temp_dir()

    def _new_ray_temp_dir(self) -> Path:
        # Under the state dir when the path is short enough: Ray's unix socket paths
        # (TEMP/session_<date>_<pid>/sockets/plasma_store) must stay under 107 bytes. Otherwise a
        # short dir in /tmp, unique per state dir, which `stack down` removes.
        inside = self.root / "ray-tmp"
        if len(str(inside)) <= 40:
            return inside
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path("/tmp") / f"img2img-ray-{digest}"

    @property
    def ray_logs_kept(self) -> Path:
        return self.logs / "ray-session"

    # ---- health -----------------------------------------------------------------------------
    def s3_healthy(self) -> bool:
        from cluster.storage import Storage

        try:
            Storage(self.settings, retries=0).client.list_buckets()
            return True
        except Exception:
            return False

    def mlflow_healthy(self) -> bool:
        return _http_ok(self.settings.mlflow_uri.rstrip("/") + "/health")

    def ray_healthy(self) -> bool:
        return _http_ok(self.settings.ray_address.rstrip("/") + "/api/version", self.settings.ray_auth_headers())

    def _wait(self, name: str, check: Callable[[], bool], proc: subprocess.Popen | None, timeout: float) -> None:
        def state() -> str | None:
            if check():
                return "up"
            died = proc is not None and proc.poll() is not None and name != "ray"
            return "died" if died else None

        if poll_until(state, timeout) == "up":
            return
        raise Img2ImgError(f"{name} did not come up within {timeout:.0f}s; last log lines:\n{self.tail(name, 15)}")

    def up(self, progress: Callable[[str], None] = lambda msg: None, host: str | None = None) -> list[ServiceStatus]:
        """Start every local service not running yet and wait until each is healthy; `host`
        (validated by `cluster.stack_expose.validate_host`) exposes them on that address too.
        Raises Img2ImgError: a service that does not come up, a Ray head wanting another token,
        a `host` other than the one the running stack was started with."""
        self.check_host(host)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        state = self._load()
        if state.get("host") != host:
            state.pop("host", None)
            state.update({"host": host} if host else {})
            self._save(state)
        s = self.settings
        if s.is_local(s.s3_endpoint) and not self.s3_healthy():
            progress("starting S3 store (SeaweedFS)")
            state["pids"]["s3"] = self._start_s3(state)
            self._save(state)
            self._wait("s3", self.s3_healthy, None, 60)
        if host and s.is_local(s.s3_endpoint):
            gateway = Stack(self.gateway_settings(host))
            if not gateway.s3_healthy():
                progress(f"starting S3 gateway on {host}")
                state["pids"]["s3_gateway"] = self._start_s3_gateway(state, host)
                self._save(state)
                self._wait("s3-gateway", gateway.s3_healthy, None, 60)
        progress("checking S3 bucket")
        from cluster.storage import Storage

        if s.is_local(s.s3_endpoint):
            Storage(s).ensure_bucket()
        else:
            Storage(s).check()
        if s.is_local(s.mlflow_uri) and not self.mlflow_healthy():
            progress("starting MLflow server")
            state["pids"]["mlflow"] = self._start_mlflow(host)
            self._save(state)
            self._wait("mlflow", self.mlflow_healthy, None, 120)
        if host and s.is_local(s.mlflow_uri):
            self.check_mlflow_login()
        ray_status = http_status(s.ray_address.rstrip("/") + "/api/version", s.ray_auth_headers())
        if ray_status in (401, 403):
            raise Img2ImgError(f"a Ray cluster at {s.ray_address} wants a token this stack does not have: "
                               "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to its token")
        if s.is_local(s.ray_address) and ray_status != 200:
            # What a head that died without `stack down` left (an HAProxy keeps running without its
            # Ray and holds the Serve port; a half-dead raylet): it would block the new head.
            self._terminate(self._ray_processes(), timeout=3)
            progress("starting Ray head")
            self._start_ray(state)
            self._save(state)
            self._wait("ray", self.ray_healthy, None, 60)
        statuses = self.status()
        bad = [st.name for st in statuses if not st.healthy]
        if bad:
            raise Img2ImgError(f"not healthy: {', '.join(bad)} (see `img2img stack status`)")
        return statuses

    # ---- status / logs -----------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        s, state = self.settings, self._load()
        out = []
        for name, url, healthy in (("s3", s.s3_url, self.s3_healthy),
                                   ("mlflow", s.mlflow_uri, self.mlflow_healthy),
                                   ("ray", s.ray_address, self.ray_healthy)):
            managed = s.is_local(url)
            pid = state["pids"].get(name)
            if name == "ray":
                # The command lines read in the scan: one of its processes may have exited since
                # (an HAProxy replaced by a reload), and reading it again would raise.
                procs = [p for p in self._ray_processes() if "gcs_server" in " ".join(p.info["cmdline"] or [])]
                pid = procs[0].pid if procs else None
            elif not self._group(pid):
                pid = None
            detail = "embedded" if managed else "external (checked, not started)"
            if name == "ray" and managed and state.get("serve_ingress"):
                detail += f", Serve ingress {state['serve_ingress']}"
            out.append(ServiceStatus(name, url, pid, healthy(), managed, detail))
        return out

    def log_path(self, name: str) -> Path:
        if name not in SERVICES:
            raise Img2ImgError(f"unknown service {name!r}; choose one of: {', '.join(SERVICES)}")
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = 50) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"(no log at {path})"
        text = path.read_text(errors="replace").splitlines()[-lines:] if lines > 0 else []
        if name == "ray":  # the head's own logs live in its session dir (kept under logs/ by `down`)
            session = self.ray_temp_dir / "session_latest" / "logs"
            if not session.is_dir():
                session = self.ray_logs_kept
            for extra in ("gcs_server.err", "raylet.err", "dashboard.log"):
                if (session / extra).exists():
                    text += [f"--- {extra}"] + (session / extra).read_text(errors="replace").splitlines()[-lines // 3:]
        return "\n".join(text)
