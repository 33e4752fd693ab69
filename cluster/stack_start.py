"""Starting the embedded stack's services (part of `cluster.stack.Stack`): SeaweedFS, the MLflow
server and the Ray head as processes under the state dir, on ports chosen free once and recorded
in `stack.json`, and the Serve ingress's environment."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from cluster import admission
from cluster.errors import Img2ImgError
from cluster.files import write_atomic
from cluster.settings import CREDENTIALS_FILE

log = logging.getLogger("cluster.stack")
BIN = Path(sys.executable).parent
WORKER_PORTS = 192  # of a stack's block of 256; the other 64 are the Serve ingress's (cluster/ingress.py)


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

class StackStart:
    """The `Stack` methods that start its services (mixed into `cluster.stack.Stack`)."""

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

    def _start_mlflow(self, host: str | None = None) -> int:
        """The MLflow server on 127.0.0.1; with `host` (`stack up --host`), its basic-auth app
        reachable there too (cluster/stack_expose.py)."""
        from cluster.storage import mlflow_server_env

        access, secret = self.settings.s3_keys()
        db = self.root / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        auth_args, auth_env = self.mlflow_auth(host) if host else ([], {})
        cmd = [str(BIN / "mlflow"), "server", "--host", "0.0.0.0" if host else "127.0.0.1",
               "--port", str(self.settings.port_of(self.settings.mlflow_uri)),
               "--backend-store-uri", f"sqlite:///{db}",
               "--artifacts-destination", f"s3://{self.settings.bucket}/mlflow-artifacts", "--workers", "1",
               *auth_args]
        env = {"MLFLOW_S3_ENDPOINT_URL": self.settings.s3_url, "AWS_ACCESS_KEY_ID": access,
               "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": self.settings.s3_region,
               **mlflow_server_env(self.settings.s3_max_attempts), **auth_env}
        return self._spawn("mlflow", cmd, env).pid

    def _start_ray(self, state: dict) -> None:
        token = self.settings.ray_token_path
        if not token.exists():
            _write_secret(token, secrets.token_hex(32))
        state["ray_temp_dir"] = str(self._new_ray_temp_dir())
        self._save(state)
        p = self._ports(state, ["gcs", "client", "agent", "agent_grpc", "metrics", "runtime_env", "node_manager",
                                "object_manager"])
        # Exposed (`stack up --host`): the head's node address is the host, the dashboard listens on
        # every interface (token auth), so loopback clients and other machines both reach it.
        host = state.get("host")
        cmd = [str(BIN / "ray"), "start", "--head", f"--node-ip-address={host or '127.0.0.1'}", f"--port={p['gcs']}",
               f"--dashboard-host={'0.0.0.0' if host else '127.0.0.1'}",
               f"--dashboard-port={self.settings.port_of(self.settings.ray_address)}",
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
