"""A Ray worker node that joins a head (part of `cluster.stack.Stack`): `img2img stack join`
starts one under this state dir, `stack leave` stops it, `stack status` lists every node.

The node authenticates with the head's token (Ray's token auth stays on) and advertises the
admission resources (`cluster.admission.node_resources`) like the head, so jobs count its CPUs.
Its Ray processes run in the state dir with their own temp dir and ports, so a second node on
the head's own machine (tests) is found and stopped by its state dir alone, never by `ray stop`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from cluster import admission
from cluster.errors import Img2ImgError
from cluster.settings import CREDENTIALS_FILE

log = logging.getLogger("cluster.stack")
GCS_ADDRESS = re.compile(r"--gcs-address=(\S+)")


@dataclass
class NodeInfo:
    """One Ray node as the head's dashboard reports it. cpus/gpus: logical totals; alive: the
    raylet's state is ALIVE (a killed node turns DEAD after Ray's health checks, ~30 s)."""

    node_id: str
    ip: str
    head: bool
    alive: bool
    cpus: float
    gpus: float
    admission_cpus: float
    workers: int  # live Ray actors on it now
    running: dict[str, int] = field(default_factory=dict)  # what they are: {actor class: count}

    def to_dict(self) -> dict:
        return asdict(self)

    def describe_running(self) -> str:
        """e.g. "2 RayTrainWorker, 1 ServeReplica:img2img:Enhancer"; "-" when idle."""
        return ", ".join(f"{n} {name}" for name, n in sorted(self.running.items())) or "-"


def running_name(class_name: str) -> str | None:
    """What a live Ray actor runs, by its class name, innermost for Ray Data's wrappers
    (`MapWorker(MapBatches(Scorer))` -> `Scorer`); None for a nameless one."""
    name = (class_name or "").rsplit("(", 1)[-1].rstrip(")").strip()
    return name or None


def _live_actors(url: str, headers: dict) -> list[dict]:
    """The cluster's ALIVE actors ({"class_name", "node_id", ...}) from the state API; [] when it
    does not answer (the node table is still worth showing)."""
    try:
        r = httpx.get(url.rstrip("/") + "/api/v0/actors",
                      params={"detail": "true", "limit": 10000, "filter_keys": "state", "filter_predicates": "=",
                              "filter_values": "ALIVE"}, headers=headers, timeout=10)
        return ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return []


def _summary(url: str, headers: dict) -> list[dict]:
    """The dashboard's `/nodes?view=summary` entries. Raises Img2ImgError, one line, when the
    head does not answer or refuses the token."""
    try:
        r = httpx.get(url.rstrip("/") + "/nodes", params={"view": "summary"}, headers=headers, timeout=10)
    except httpx.HTTPError:
        raise Img2ImgError(f"cannot reach the Ray head at {url}: is its stack up, and is the URL its dashboard "
                           "address as `img2img stack status` prints it?") from None
    if r.status_code in (401, 403):
        raise Img2ImgError(f"the Ray head at {url} refused the token (HTTP {r.status_code}): pass the head's token "
                           "with --token-file (the head's <state dir>/ray/auth_token) or RAY_AUTH_TOKEN")
    try:
        return r.json()["data"]["summary"]
    except (ValueError, KeyError, TypeError):
        raise Img2ImgError(f"{url} answered HTTP {r.status_code} but is not a Ray dashboard") from None


def list_nodes(url: str, headers: dict) -> list[NodeInfo]:
    """Every node the head knows (alive and dead), the head first, with its live actors by class.
    Raises Img2ImgError (see `_summary`)."""
    out = []
    by_node: dict[str, Counter] = {}
    for actor in _live_actors(url, headers):
        name = running_name(str(actor.get("class_name", "")))
        if name:
            by_node.setdefault(actor.get("node_id", ""), Counter())[name] += 1
    for entry in _summary(url, headers):
        raylet = entry.get("raylet") or {}
        res = raylet.get("resourcesTotal") or {}
        running = by_node.get(raylet.get("nodeId", ""), Counter())
        out.append(NodeInfo(node_id=raylet.get("nodeId", ""), ip=raylet.get("nodeManagerAddress", entry.get("ip", "")),
                            head=bool(raylet.get("isHeadNode")), alive=raylet.get("state") == "ALIVE",
                            cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
                            admission_cpus=float(res.get("img2imgCpu", res.get(admission.RESOURCE, 0))),
                            workers=sum(running.values()), running=dict(running)))
    return sorted(out, key=lambda n: (not n.head, not n.alive, n.node_id))


def gcs_address(url: str, headers: dict) -> str:
    """`host:port` of the head's GCS, which a joining raylet dials: the port from the head
    raylet's own command line (as the dashboard reports it), the host from `url` (the GCS listens
    on every interface of the head). Raises Img2ImgError when the head does not say."""
    for entry in _summary(url, headers):
        if (entry.get("raylet") or {}).get("isHeadNode"):
            found = GCS_ADDRESS.search(" ".join(entry.get("cmdline") or []))
            if found:
                host = urlparse(url).hostname or "127.0.0.1"
                return f"{host}:{found.group(1).rsplit(':', 1)[1]}"
    raise Img2ImgError(f"the Ray head at {url} does not report its GCS address; is it a Ray head's dashboard?")


def read_token(token_file: Path | None) -> str:
    """The head's token: `token_file`'s content, else $RAY_AUTH_TOKEN. Raises Img2ImgError when
    neither gives one."""
    if token_file is not None:
        if not token_file.is_file():
            raise Img2ImgError(f"--token-file {token_file}: no such file")
        token = token_file.read_text().strip()
        if not token:
            raise Img2ImgError(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        raise Img2ImgError("joining needs the head's token: pass --token-file (the head's <state dir>/ray/auth_token) "
                           "or set RAY_AUTH_TOKEN")
    return token


class StackJoin:
    """The `Stack` methods for a worker node (mixed into `cluster.stack.Stack`)."""

    def joined(self) -> dict | None:
        """What `join` recorded ({"head", "gcs", "cpus", "gpus"}) while this state dir's node runs, else None."""
        node = self._load().get("node")
        return node if node and self._ray_processes() else None

    def join(self, head_url: str, num_cpus: int | None = None, gpus: int = 0, token_file: Path | None = None,
             node_ip: str | None = None) -> dict:
        """Start a Ray worker node under this state dir that joins the head whose dashboard is
        `head_url`, authenticated with the head's token, advertising `num_cpus` CPUs (default: the
        machine's) and `gpus` GPUs plus the same admission resources. Workers on it read the S3
        keys from this state dir (copied from IMG2IMG_S3_ACCESS_KEY/SECRET_KEY; keys never come
        from the head), and the MLflow user and password likewise when IMG2IMG_MLFLOW_USERNAME/
        PASSWORD are set (optional: without them, a process on this node that calls an MLflow
        with basic auth gets HTTP 401 from it). -> the recorded node. Raises Img2ImgError: bad counts, no token, head
        unreachable or refusing the token, already joined, a head running here, no S3 keys,
        `ray start` failing."""
        from cluster.stack_start import BIN, _write_secret

        num_cpus = (os.cpu_count() or 1) if num_cpus is None else num_cpus
        if num_cpus < 1 or gpus < 0:
            raise Img2ImgError(f"--num-cpus must be at least 1 and --gpus at least 0, got {num_cpus} and {gpus}")
        if urlparse(head_url).scheme not in ("http", "https") or not urlparse(head_url).hostname:
            raise Img2ImgError(f"--head {head_url!r} is not a URL: give the head's dashboard address, "
                               "e.g. http://10.0.0.5:8265 (`img2img stack status` on the head prints it)")
        state = self._load()
        if state.get("node") and self._ray_processes():
            raise Img2ImgError(f"this state dir ({self.root}) already runs a node joined to {state['node']['head']}; "
                               "`img2img stack leave` first, or use another IMG2IMG_STATE_DIR")
        if state.get("pids", {}).get("mlflow") or (state.get("ports", {}).get("gcs") and self._ray_processes()):
            raise Img2ImgError(f"this state dir ({self.root}) runs a stack's head; join from another IMG2IMG_STATE_DIR")
        keys = self.settings.s3_keys()
        if keys is None:
            raise Img2ImgError("a node's workers need the S3 store's keys: set IMG2IMG_S3_ACCESS_KEY and "
                               "IMG2IMG_S3_SECRET_KEY (on the embedded stack: the head's <state dir>/credentials.json)")
        token = read_token(token_file)
        headers = {"Authorization": f"Bearer {token}"}
        gcs = gcs_address(head_url, headers)  # also proves the head answers and takes the token
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        _write_secret(self.settings.ray_token_path, token)
        creds = {"access_key": keys[0], "secret_key": keys[1]}
        mlflow = self.settings.mlflow_credentials()
        if mlflow:  # optional: a head exposed with `stack up --host` runs MLflow with basic auth
            creds.update(mlflow_username=mlflow[0], mlflow_password=mlflow[1])
        _write_secret(self.root / CREDENTIALS_FILE, json.dumps(creds))
        state["ray_temp_dir"] = str(self._new_ray_temp_dir())
        p = self._ports(state, ["node_manager", "object_manager", "metrics", "agent", "agent_grpc", "runtime_env"])
        ip = node_ip or ("127.0.0.1" if self.settings.is_local(gcs) else None)
        cmd = [str(BIN / "ray"), "start", f"--address={gcs}", *([f"--node-ip-address={ip}"] if ip else []),
               f"--num-cpus={num_cpus}", f"--num-gpus={gpus}", "--disable-usage-stats",
               f"--temp-dir={state['ray_temp_dir']}",
               f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
               f"--metrics-export-port={p['metrics']}", f"--dashboard-agent-listen-port={p['agent']}",
               f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env']}",
               "--object-store-memory=1000000000", *self._worker_port_range(),
               f"--resources={json.dumps(admission.node_resources(num_cpus, gpus))}"]
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.settings.ray_token_path),
               "IMG2IMG_STATE_DIR": str(self.root)}
        state["node"] = {"head": head_url, "gcs": gcs, "cpus": num_cpus, "gpus": gpus}
        self._save(state)
        proc = self._spawn("ray", cmd, env)
        try:
            rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self._terminate(self._ray_processes(), timeout=3)
            raise Img2ImgError(f"`ray start` hung joining {gcs}; last log lines:\n{self.tail('ray', 15)}") from None
        if rc != 0:
            self._terminate(self._ray_processes(), timeout=3)
            state.pop("node", None)
            self._save(state)
            raise Img2ImgError(f"`ray start` could not join {gcs} (exit {rc}); last log lines:\n{self.tail('ray', 15)}")
        return state["node"]

    def leave(self) -> bool:
        """Stop the node this state dir started (its own processes only; jobs with workers on
        it see a node loss). -> False when none runs."""
        state = self._load()
        if not state.get("node"):
            return False
        running = bool(self._ray_processes())
        self.down()
        state = self._load()
        state.pop("node", None)
        self._save(state)
        return running
