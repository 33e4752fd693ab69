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
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil

from cluster import admission
from cluster.errors import Img2ImgError
from cluster.files import write_atomic
from cluster.services import http_status, poll_until
from cluster.settings import CREDENTIALS_FILE, Settings, get_settings

log = logging.getLogger(__name__)
SERVICES = ("s3", "mlflow", "ray")
BIN = Path(sys.executable).parent


WORKER_PORTS = 192  # of a stack's block of 256; the other 64 are the Serve ingress's (cluster/ingress.py)
RAY_COMMAND = re.compile(r"(^|[/\s])ray(::|\.|/)")  # `ray::Agent`, `-m ray.x`, `.../ray/...`


@dataclass
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    healthy: bool
    managed: bool  # started by this stack (vs. pointed elsewhere)
    detail: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o600)


def _http_ok(url: str, headers: dict | None = None, timeout: float = 2.0) -> bool:
    return http_status(url, headers, timeout) == 200


class Stack:
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
        port = self._load().get("ports", {}).get("gcs")
        return f"127.0.0.1:{port}" if port else None

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

    # ---- start ------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        logf = open(self.logs / f"{name}.log", "ab")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "TMPDIR": str(self.tmp_dir)}
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True, cwd=self.root)

    def _ensure_keys(self) -> tuple[str, str]:
        keys = self.settings.s3_keys()
        if keys is None:
            keys = ("img2img-" + secrets.token_hex(6), secrets.token_urlsafe(30))
            _write_secret(self.root / CREDENTIALS_FILE, json.dumps({"access_key": keys[0], "secret_key": keys[1]}))
        return keys

    def _start_s3(self, state: dict) -> int:
        access, secret = self._ensure_keys()
        data = self.root / "s3"
        data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "img2img", "credentials": [{"accessKey": access, "secretKey": secret}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        _write_secret(self.root / "s3-identities.json", json.dumps(identities))
        (data / "mini.options").unlink(missing_ok=True)  # it would re-apply an old start's flags
        p = self._ports(state, ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                                "s3_grpc"])
        p["admin"] = self._admin_port(state)
        cmd = [str(BIN / "weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={self.settings.port_of(self.settings.s3_hostport)}", f"-s3.port.grpc={p['s3_grpc']}",
               f"-s3.config={self.root / 's3-identities.json'}", f"-master.port={p['master']}",
               f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}",
               f"-volume.port.grpc={p['volume_grpc']}", f"-filer.port={p['filer']}",
               f"-filer.port.grpc={p['filer_grpc']}", f"-admin.port={p['admin']}",
               "-master.telemetry=false", "-webdav=false",
               "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        return self._spawn("s3", cmd, {}).pid

    def _admin_port(self, state: dict) -> int:
        """The admin port of `weed mini`, such that admin + 10000 is free too: its maintenance
        worker dials the admin's gRPC at that offset whatever -admin.port.grpc says, and logs
        'connection refused' every few seconds when nothing listens there."""
        ports = state.setdefault("ports", {})
        port = ports.get("admin")
        rng = random.Random()
        for _ in range(200):
            if port and port + 10000 <= 65535 and port_free(port) and port_free(port + 10000):
                ports["admin"] = port
                ports.pop("admin_grpc", None)
                return port
            port = rng.randrange(33000, 55000)
        raise Img2ImgError("no free pair of ports (P, P+10000) for the S3 store's admin service")

    def _start_mlflow(self) -> int:
        from cluster.storage import mlflow_server_env

        access, secret = self.settings.s3_keys()
        db = self.root / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(self.settings.port_of(self.settings.mlflow_uri)),
               "--backend-store-uri", f"sqlite:///{db}",
               "--artifacts-destination", f"s3://{self.settings.bucket}/mlflow-artifacts", "--workers", "1"]
        env = {"MLFLOW_S3_ENDPOINT_URL": self.settings.s3_url, "AWS_ACCESS_KEY_ID": access,
               "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": self.settings.s3_region,
               **mlflow_server_env(self.settings.s3_max_attempts)}
        return self._spawn("mlflow", cmd, env).pid

    def _start_ray(self, state: dict) -> None:
        token = self.settings.ray_token_path
        if not token.exists():
            _write_secret(token, secrets.token_hex(32))
        state["ray_temp_dir"] = str(self._new_ray_temp_dir())
        self._save(state)
        p = self._ports(state, ["gcs", "client", "agent", "agent_grpc", "metrics", "runtime_env", "node_manager",
                                "object_manager"])
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={p['gcs']}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.settings.port_of(self.settings.ray_address)}",
               "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={self.ray_temp_dir}",
               f"--num-cpus={self.settings.ray_num_cpus}", f"--ray-client-server-port={p['client']}",
               f"--dashboard-agent-listen-port={p['agent']}", f"--dashboard-agent-grpc-port={p['agent_grpc']}",
               f"--metrics-export-port={p['metrics']}", f"--runtime-env-agent-port={p['runtime_env']}",
               f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
               "--object-store-memory=1500000000", *self._worker_port_range(),
               f"--resources={json.dumps(admission.node_resources(self.settings.ray_num_cpus))}"]
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), **admission.head_env()}
        env.update(self._service_env())
        env.update(self._ingress_env(state))
        self._save(state)
        for attempt in (1, 2):
            proc = self._spawn("ray", cmd, env)
            try:
                rc = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                raise Img2ImgError(f"`ray start` hung; last log lines:\n{self.tail('ray', 15)}") from None
            if rc == 0:
                return
            # On an overloaded machine the raylet can give up waiting for its dashboard agent
            # ("node timed out during startup"): clear what this attempt left and try once more.
            self._terminate(self._ray_processes())
            if attempt == 2 or "timed out during startup" not in self.tail("ray", 30):
                raise Img2ImgError(f"`ray start` failed (exit {rc}); last log lines:\n{self.tail('ray', 15)}")
            log.warning("`ray start` timed out during startup; retrying once")

    def _port_block(self) -> int | None:
        """The first of 256 ports kept for this stack's Ray workers (192) and Serve replicas' own
        HTTP servers (64): Ray's defaults (10002-19999, 30000-31000) clash with the ports the
        settings name, and with a second stack; ephemeral ports (32768+) are never in it."""
        s = self.settings
        taken = {s.port_of(u) for u in (s.s3_hostport, s.mlflow_uri, s.ray_address, s.serve_url)}
        seed = int(hashlib.sha1(str(self.root).encode()).hexdigest(), 16)
        for i in range(48):
            low = 20000 + ((seed + i) % 48) * 256
            if not any(low <= port < low + 256 for port in taken):
                return low
        return None

    def _worker_port_range(self) -> list[str]:
        low = self._port_block()
        return [] if low is None else [f"--min-worker-port={low}", f"--max-worker-port={low + WORKER_PORTS - 1}"]

    @property
    def haproxy_dir(self) -> Path:
        """HAProxy's config, sockets and wrapper for this stack: short (unix socket paths under
        it get Ray's 56-character node id), unique per state dir, removed by `stack down`."""
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:8]
        return Path("/tmp") / f"i2i-hap-{digest}"

    def ingress_ports(self, state: dict) -> tuple[dict[str, int], tuple[int, int]]:
        """The HAProxy ingress's ports -> ({"haproxy_stats", "haproxy_metrics",
        "serve_fallback_http", "serve_fallback_grpc": port}, (first, last) replica HTTP port).
        They come from the stack's block, after its worker ports: HAProxy binds them only at the
        first deploy, so none may be one an outgoing connection can take meanwhile. With no block
        free of the settings' ports: free ports now, and Ray's replica range."""
        names = ["haproxy_stats", "haproxy_metrics", "serve_fallback_http", "serve_fallback_grpc"]
        low = self._port_block()
        if low is None:
            return self._ports(state, names), (30000, 31000)
        return ({name: low + WORKER_PORTS + i for i, name in enumerate(names)},
                (low + WORKER_PORTS + len(names), low + 255))

    def _ingress_env(self, state: dict) -> dict[str, str]:
        """`ray start`'s environment for the Serve ingress the settings ask for (cluster/ingress.py)."""
        from cluster import ingress

        state["serve_ingress"] = kind = ingress.resolve(self.settings.serve_ingress)
        if kind == "proxy":
            return {}
        ports, replicas = self.ingress_ports(state)
        ingress.private_dir(self.haproxy_dir)
        host = urlparse(self.settings.serve_url).hostname or "127.0.0.1"
        return ingress.ray_env(self.haproxy_dir, host, stats_port=ports["haproxy_stats"],
                               metrics_port=ports["haproxy_metrics"], fallback_ports=(
                                   ports["serve_fallback_http"], ports["serve_fallback_grpc"]),
                               replica_ports=replicas)

    def _service_env(self) -> dict[str, str]:
        """What jobs on the cluster need to reach the stores (inherited by Ray workers)."""
        return {**self.settings.job_env(), "IMG2IMG_STATE_DIR": str(self.root)}

    def up(self, progress: Callable[[str], None] = lambda msg: None) -> list[ServiceStatus]:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        state = self._load()
        s = self.settings
        if s.is_local(s.s3_endpoint) and not self.s3_healthy():
            progress("starting S3 store (SeaweedFS)")
            state["pids"]["s3"] = self._start_s3(state)
            self._save(state)
            self._wait("s3", self.s3_healthy, None, 60)
        progress("checking S3 bucket")
        from cluster.storage import Storage

        if s.is_local(s.s3_endpoint):
            Storage(s).ensure_bucket()
        else:
            Storage(s).check()
        if s.is_local(s.mlflow_uri) and not self.mlflow_healthy():
            progress("starting MLflow server")
            state["pids"]["mlflow"] = self._start_mlflow()
            self._save(state)
            self._wait("mlflow", self.mlflow_healthy, None, 120)
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

    # ---- stop -------------------------------------------------------------------------------
    def _ray_processes(self) -> list[psutil.Process]:
        """Every process of this stack's Ray head: by its temp dir or HAProxy dir, or a Ray command run in the state dir."""
        # The temp dir as a whole path component (not a suffix of another stack's path).
        # HAProxy (the Serve ingress) runs with its config under this stack's haproxy_dir.
        dirs = "|".join(re.escape(str(d)) for d in (self.ray_temp_dir, self.haproxy_dir))
        marker = re.compile(r"(^|[=\s,])(" + dirs + r")(/|$|[\s,])")
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmdline = proc.info["cmdline"] or []
                # Ray's agents retitle themselves (`ray::DashboardAgent`) and its client server
                # names no temp dir: a Ray process is ours when it runs in this stack's state dir.
                in_root = proc.info["cwd"] == str(self.root) and RAY_COMMAND.search(" ".join(cmdline))
                if in_root or any(marker.search(part) for part in cmdline):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    @staticmethod
    def _terminate(procs: list[psutil.Process], timeout: float = 15) -> None:
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def _group(self, pid: int | None) -> list[psutil.Process]:
        """The process and its descendants, if the pid is still ours (started in state dir)."""
        if not pid:
            return []
        try:
            proc = psutil.Process(pid)
            if Path(proc.cwd()) != self.root:
                return []  # the pid was reused by someone else
            return [proc, *proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []

    def down(self, progress: Callable[[str], None] = lambda msg: None) -> list[str]:
        """Stop only what this stack started; data stays in the state dir."""
        state = self._load()
        stopped = []
        ray_procs = self._ray_processes()
        if ray_procs:
            progress("stopping Ray head")
            # Ray keeps no state worth a graceful stop (the head is ephemeral, its temp dir is
            # removed below), and once they are all signalled together the GCS, raylet and agents
            # wait on each other for 15 s or more: what has not exited after 3 s is killed.
            self._terminate(ray_procs, timeout=3)
            stopped.append("ray")
        for name in ("mlflow", "s3"):
            procs = self._group(state["pids"].get(name))
            if procs:
                progress(f"stopping {name}")
                try:
                    os.killpg(procs[0].pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                self._terminate(procs, timeout=15)
                stopped.append(name)
            state["pids"].pop(name, None)
        if self.state_file.exists():
            self._save(state)
        self._clean_temp()
        return stopped

    def _clean_temp(self) -> None:
        """Once the services are stopped: keep Ray's last session logs under logs/, remove its
        temp dir (sockets, runtime envs, spilled objects) and the stack's TMPDIR."""
        import shutil

        if self._ray_processes():
            return  # something of ours still runs: leave its files alone
        session_logs = self.ray_temp_dir / "session_latest" / "logs"
        if session_logs.is_dir():
            shutil.rmtree(self.ray_logs_kept, ignore_errors=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            shutil.copytree(session_logs, self.ray_logs_kept, symlinks=True, ignore_dangling_symlinks=True,
                            dirs_exist_ok=True)
        shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        shutil.rmtree(self.haproxy_dir, ignore_errors=True)
        state = self._load()
        if not any(self._group(state.get("pids", {}).get(n)) for n in ("mlflow", "s3")):
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

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
