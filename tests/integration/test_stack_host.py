"""`img2img stack up --host 127.0.0.2`: a whole stack exposed on a second address (Linux routes
all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2 stands for another interface, and
127.0.0.3 for an address the stack was not asked to expose), started and stopped through the CLI.
Every service answers at the host only with its credentials; the store's unauthenticated ports
stay on 127.0.0.1; a worker node joins the exposed head and its tasks reach S3 and MLflow there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cluster.settings import Settings
from tests.conftest import stack_env

pytestmark = pytest.mark.integration
HOST, OTHER = "127.0.0.2", "127.0.0.3"
REPO = Path(__file__).resolve().parents[2]


def img2img(env: dict, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """`img2img ARGS` as its own process, with this checkout's packages first."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("IMG2IMG_", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_", "AWS_"))}
    full.update(env)
    full.update(PYTHONPATH=str(REPO), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "img2img_cli", *args], env=full, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def refused(host: str, port: int) -> bool:
    """True when nothing accepts a TCP connection at host:port."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


def at(url: str, host: str) -> str:
    from urllib.parse import urlparse

    return f"http://{host}:{urlparse(url).port}"


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """The stack up with --host 127.0.0.2 -> (env, Settings, `stack up`'s output); down at the end."""
    env = stack_env(tmp_path_factory.mktemp("exposed") / "state")
    env["IMG2IMG_RAY_NUM_CPUS"] = "4"
    settings = Settings(**{k.removeprefix("IMG2IMG_").lower(): v for k, v in env.items()})
    try:
        t0 = time.monotonic()
        r = img2img(env, "stack", "up", "--host", HOST)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"stack up --host: {time.monotonic() - t0:.0f}s")
        yield env, settings, r.stdout
    finally:
        img2img(env, "stack", "down", timeout=120)


def test_up_says_what_is_exposed_where_and_how(exposed):
    env, s, out = exposed
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index(f"What --host {HOST} exposes:")
    ray, s3, mlflow, loopback = lines[start + 1:start + 5]
    assert ray.startswith(f"Ray: dashboard / Jobs API {at(s.ray_address, HOST)}") and "token auth" in ray
    assert f"stack join --head {at(s.ray_address, HOST)}" in ray
    assert s3.startswith(f"S3: {at(s.s3_url, HOST)} (HAProxy bound to {HOST} only") and "access keys" in s3
    assert mlflow.startswith(f"MLflow: {at(s.mlflow_uri, HOST)} (listening on 0.0.0.0") and "basic auth" in mlflow
    assert loopback.startswith("Loopback only (127.0.0.1)") and s.serve_url in loopback
    creds = json.loads((s.state_path / "credentials.json").read_text())
    assert not any(secret in out for secret in creds.values() if len(secret) > 16)
    assert (s.state_path / "credentials.json").stat().st_mode & 0o777 == 0o600
    ini = s.state_path / "mlflow" / "basic_auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600 and creds["mlflow_password"] not in ini.read_text()


def test_s3_at_the_host_wants_the_keys_and_nothing_else_of_the_store_is_there(exposed):
    from minio import Minio
    from minio.error import S3Error

    env, s, _ = exposed
    port = s.port_of(s.s3_hostport)
    access, secret = s.s3_keys()
    assert s.bucket in [b.name for b in Minio(f"{HOST}:{port}", access, secret, secure=False).list_buckets()]
    assert httpx.get(f"http://{HOST}:{port}/{s.bucket}").status_code == 403  # no keys
    with pytest.raises(S3Error) as e:
        Minio(f"{HOST}:{port}", access, "wrong-secret-key", secure=False).list_buckets()
    assert e.value.response.status == 403
    assert refused(OTHER, port)  # bound to the host, not 0.0.0.0
    state = json.loads((s.state_path / "stack.json").read_text())
    assert state["host"] == HOST
    for name in ("filer", "filer_grpc", "master", "volume", "s3_grpc"):  # no auth there: loopback only
        assert refused(HOST, state["ports"][name]) and not refused("127.0.0.1", state["ports"][name]), name


def test_mlflow_at_the_host_wants_the_password(exposed, monkeypatch):
    from mlflow.tracking import MlflowClient

    env, s, _ = exposed
    url = at(s.mlflow_uri, HOST)
    search = "/api/2.0/mlflow/experiments/search"
    assert httpx.get(url + search, params={"max_results": 1}).status_code == 401
    assert httpx.get(url + search, params={"max_results": 1}, auth=("img2img-admin", "wrong")).status_code == 401
    user, password = s.mlflow_credentials()
    assert password != "password" and len(password) >= 30  # generated, not MLflow's example
    assert httpx.get(url + search, params={"max_results": 1}, auth=(user, password)).status_code == 200
    # any other Host header (here: an address it was not asked to serve) is turned away
    assert httpx.get(at(s.mlflow_uri, OTHER) + search, auth=(user, password)).status_code == 403
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    exp = MlflowClient(url).create_experiment(f"exposed-{time.time_ns()}")
    assert MlflowClient(s.mlflow_uri).get_experiment(exp).experiment_id == exp  # loopback too, same server


def test_ray_dashboard_at_the_host_wants_the_token(exposed):
    env, s, _ = exposed
    api = at(s.ray_address, HOST) + "/api/version"
    token = s.ray_token_path.read_text().strip()
    assert httpx.get(api).status_code == 401
    assert httpx.get(api, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(api, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(s.ray_address + "/api/version", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_status_reports_the_host(exposed):
    env, s, _ = exposed
    r = img2img(env, "stack", "status", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["service"]: row for row in json.loads(r.stdout)}
    assert {row["host"] for row in rows.values()} == {HOST}
    assert rows["s3"]["exposed_url"] == at(s.s3_url, HOST) and rows["ray"]["exposed_url"] == at(s.ray_address, HOST)
    nodes = rows["ray"]["nodes"]
    assert [n["ip"] for n in nodes if n["head"]] == [HOST]
    r = img2img(env, "stack", "status")
    assert f"other machines join with `img2img stack join --head {at(s.ray_address, HOST)}`" in r.stdout


def test_up_with_another_host_or_none_is_refused(exposed):
    env, s, _ = exposed
    for args, again in ((["--host", OTHER], f"`img2img stack up --host {OTHER}`"), ([], "`img2img stack up`")):
        r = img2img(env, "stack", "up", *args, timeout=60)
        assert r.returncode == 1 and r.stderr.strip() == (
            f"Error: the stack runs exposed on {HOST}: `img2img stack down` first, then {again}"), r.stderr
    r = img2img(env, "stack", "up", "--host", HOST)  # the same host: nothing to do
    assert r.returncode == 0, r.stderr


def test_a_joined_node_reaches_s3_and_mlflow_at_the_host(exposed, tmp_path, monkeypatch):
    """A worker node joins the exposed head (its credentials from the environment, as on another
    machine); a task placed on it sees the host's endpoints and reaches the store and MLflow."""
    from ray.job_submission import JobSubmissionClient

    from jobs.training.client import runtime_env

    env, s, _ = exposed
    access, secret = s.s3_keys()
    user, password = s.mlflow_credentials()
    node = {"IMG2IMG_STATE_DIR": str(tmp_path / "node"), "IMG2IMG_S3_ACCESS_KEY": access,
            "IMG2IMG_S3_SECRET_KEY": secret, "IMG2IMG_MLFLOW_USERNAME": user, "IMG2IMG_MLFLOW_PASSWORD": password}
    r = img2img(node, "stack", "join", "--head", at(s.ray_address, HOST), "--num-cpus", "1",
                "--token-file", str(s.ray_token_path), timeout=200)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        creds = tmp_path / "node" / "credentials.json"
        assert json.loads(creds.read_text())["mlflow_username"] == user and creds.stat().st_mode & 0o777 == 0o600
        entry = tmp_path / "entry.py"
        entry.write_text(PROBE)
        job_env = runtime_env(s)  # what `img2img train` sends: the host's endpoints, no secret
        assert job_env["env_vars"]["IMG2IMG_S3_ENDPOINT"] == f"{HOST}:{s.port_of(s.s3_hostport)}"
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(s.ray_token_path))
        s.apply_ray_env()  # Ray caches its auth mode: refresh it
        # this head's token as our header: Ray's loader caches the first token this process read
        client = JobSubmissionClient(at(s.ray_address, HOST),
                                     headers={"Authorization": f"Bearer {s.ray_token_path.read_text().strip()}"})
        job = client.submit_job(entrypoint=f"python {entry}", runtime_env=job_env)
        deadline = time.time() + 240
        while str(client.get_job_status(job)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.time() < deadline, client.get_job_logs(job)
            time.sleep(2)
        logs = client.get_job_logs(job)
        probe = json.loads(next(line for line in logs.splitlines() if line.startswith("PROBE "))[6:])
        assert probe == {"on_node": True, "state_dir": str(tmp_path / "node"),
                         "s3": f"{HOST}:{s.port_of(s.s3_hostport)}", "mlflow": at(s.mlflow_uri, HOST),
                         "bucket": True, "experiment": True}, logs
    finally:
        img2img(node, "stack", "leave", timeout=120)


PROBE = '''
import json, os, ray, mlflow
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=os.environ.get("RAY_ADDRESS"))
node = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] != "127.0.0.2"][0]

@ray.remote(num_cpus=0.1)
def probe():
    from cluster.settings import get_settings
    from cluster.storage import Storage
    s = get_settings()
    mlflow.set_tracking_uri(s.mlflow_uri)
    exp = mlflow.set_experiment("from-the-joined-node").experiment_id
    return {"on_node": ray.get_runtime_context().get_node_id() == node, "state_dir": str(s.state_path),
            "s3": s.s3_endpoint, "mlflow": s.mlflow_uri, "bucket": Storage(s).client.bucket_exists(s.bucket),
            "experiment": bool(exp)}

print("PROBE " + json.dumps(ray.get(probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote())))
'''


def test_a_tiny_training_through_the_exposed_stack(exposed, monkeypatch):
    """`img2img data ingest` and `img2img train --max-steps 2` as a user runs them: the job's
    processes reach S3 and MLflow at the host (its runtime env) and register the model."""
    from mlflow.tracking import MlflowClient

    env, s, _ = exposed
    r = img2img(env, "data", "ingest", "--sample", "--name", "tiny", "--size", "32", "--crops", "1", timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    r = img2img(env, "train", "--dataset", "tiny", "--variant", "autoencoder", "--set", "nf=8", "--image-size", "32",
                "--batch-size", "4", "--cpus-per-worker", "0.5", "--workers", "1", "--max-steps", "2", "--follow",
                timeout=400)
    assert r.returncode == 0 and "SUCCEEDED" in r.stdout, r.stdout + r.stderr
    user, password = s.mlflow_credentials()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    versions = MlflowClient(at(s.mlflow_uri, HOST)).search_model_versions("name='tiny'")
    assert [v.version for v in versions] == ["1"]


def test_down_stops_every_process_of_the_stack(exposed):
    env, s, _ = exposed
    state = json.loads((s.state_path / "stack.json").read_text())
    gateway = state["pids"]["s3_gateway"]
    r = img2img(env, "stack", "down", timeout=120)
    assert r.returncode == 0 and "s3_gateway" in r.stdout, r.stdout + r.stderr
    root = str(s.state_path)
    deadline = time.time() + 10
    while time.time() < deadline and [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == root]:
        time.sleep(0.5)
    assert [p.info["cwd"] for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == root] == []
    assert not psutil.pid_exists(gateway) or psutil.Process(gateway).status() == psutil.STATUS_ZOMBIE
    assert refused(HOST, s.port_of(s.s3_hostport)) and refused("127.0.0.1", s.port_of(s.s3_hostport))
    assert "host" not in json.loads((s.state_path / "stack.json").read_text())


def test_up_again_with_another_mlflow_password_is_refused(exposed):
    """MLflow keeps the admin made at its first start: a different IMG2IMG_MLFLOW_PASSWORD at a
    later `stack up --host` is one line naming the users' database (after the previous test's down)."""
    env, s, _ = exposed
    try:
        r = img2img({**env, "IMG2IMG_MLFLOW_USERNAME": "img2img-admin", "IMG2IMG_MLFLOW_PASSWORD": "not-the-one"},
                    "stack", "up", "--host", HOST)
        assert r.returncode == 1 and r.stderr.startswith(f"Error: MLflow at {s.mlflow_uri} refuses user "
                                                         "'img2img-admin' (HTTP 401)"), r.stdout + r.stderr
        assert "basic_auth.db" in r.stderr and "not-the-one" not in r.stderr
    finally:
        assert img2img(env, "stack", "down", timeout=120).returncode == 0
