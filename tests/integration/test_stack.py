"""The embedded stack: real SeaweedFS, MLflow server and Ray head, started by the fixture."""

import time

import pytest

from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from cluster.stack import Stack
from cluster.storage import Storage

pytestmark = pytest.mark.integration


def test_status_shows_every_service_healthy(stack, cli):
    result = cli("stack", "status")
    assert result.exit_code == 0, result.output
    for service in ("s3", "mlflow", "ray"):
        assert service in result.output
    assert "no" not in [line.split("│")[4].strip() for line in result.output.splitlines() if line.count("│") > 5]


def test_up_and_status_say_where_the_dashboard_token_is_and_it_opens_the_dashboard(stack, cli):
    import json

    import httpx

    token_file = str(stack.ray_token_path)
    for args in (("stack", "up"), ("stack", "status")):
        r = cli(*args)
        assert r.exit_code == 0 and token_file in r.output and "Authentication Token Required" in r.output, r.output
    r = cli("stack", "status", "--json")
    ray = next(x for x in json.loads(r.output) if x["service"] == "ray")
    assert ray["dashboard_token_file"] == token_file
    token = open(ray["dashboard_token_file"]).read().strip()
    assert token not in cli("stack", "status").output  # named, never printed
    api = stack.ray_address.rstrip("/") + "/api/version"
    assert httpx.get(api).status_code == 401
    assert httpx.get(api, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(api, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # the browser's way: the login dialog posts the token, and the cookie it gets back opens the dashboard
    with httpx.Client() as browser:
        assert browser.post(stack.ray_address.rstrip("/") + "/api/authenticate",
                            headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert browser.get(api).status_code == 200


def test_generated_keys_are_private(stack):
    creds = stack.state_path / "credentials.json"
    assert creds.exists() and (creds.stat().st_mode & 0o777) == 0o600
    assert (stack.ray_token_path.stat().st_mode & 0o777) == 0o600


def test_s3_round_trip_through_storage(stack):
    s = Storage(stack)
    s.put_bytes("tests/hello.txt", b"hello")
    assert s.get_bytes("tests/hello.txt") == b"hello"
    assert [o.key for o in s.list("tests/")] == ["tests/hello.txt"]
    s.delete_prefix("tests/")
    assert not s.exists("tests/hello.txt")


def test_wrong_keys_are_refused_with_a_clear_error(stack):
    bad = get_settings(s3_access_key="nobody", s3_secret_key="wrong-secret-value")
    with pytest.raises(Img2ImgError) as e:
        Storage(bad).check()
    assert stack.s3_url in str(e.value) and "credentials" in str(e.value)
    assert "wrong-secret-value" not in str(e.value)


def test_missing_bucket_and_dead_endpoint_are_clear(stack):
    with pytest.raises(Img2ImgError, match="bucket 'no-such-bucket' does not exist"):
        Storage(stack, bucket="no-such-bucket").check()
    dead = get_settings(s3_endpoint="127.0.0.1:1")
    with pytest.raises(Img2ImgError, match="cannot reach S3 at http://127.0.0.1:1"):
        Storage(dead, retries=0).check()


def test_cli_prints_one_line_errors(stack, cli, monkeypatch):
    monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", "127.0.0.1:1")
    result = cli("data", "ls")
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: cannot reach S3")
    assert "Traceback" not in result.output


def test_mlflow_run_artifact_lands_in_the_bucket(stack, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_experiment("stack-test")
    (tmp_path / "note.txt").write_text("artifact")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    keys = [o.key for o in Storage(stack).list("mlflow-artifacts/")]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys


def test_trivial_job_through_the_jobs_api(stack):
    from jobs.training.client import job_client

    client = job_client(stack)
    job = client.submit_job(entrypoint="python -c \"import ray; ray.init(); print('cpus', ray.cluster_resources()['CPU'])\"")
    deadline = time.time() + 120
    while str(client.get_job_status(job)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline
        time.sleep(1)
    assert str(client.get_job_status(job)).endswith("SUCCEEDED")
    assert "cpus 8.0" in client.get_job_logs(job)


def test_up_is_idempotent(stack):
    st = Stack(stack)
    before = {x.name: x.pid for x in st.status()}
    st.up()  # everything already healthy: nothing restarts
    assert {x.name: x.pid for x in st.status()} == before


def test_second_stack_side_by_side_down_up_keeps_data(stack, tmp_path, monkeypatch):
    """A second state dir and S3 port beside the session stack: its `up` starts only its own
    store (MLflow and Ray answer already), `down` stops only that, and data survives."""
    from tests.conftest import free_port

    other = get_settings(state_dir=tmp_path / "state2", s3_endpoint=f"127.0.0.1:{free_port()}")
    st = Stack(other)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    try:
        with pytest.raises(Img2ImgError, match="wants a token"):
            st.up()  # the session's Ray answers, but this state dir has no token for it
        monkeypatch.setenv("RAY_AUTH_TOKEN", stack.ray_token_path.read_text())
        st.up()
        Storage(other).put_bytes("tests/keep.txt", b"survives")
        assert st.down() == ["s3"]
        assert not st.s3_healthy()
        assert Stack(stack).mlflow_healthy() and Stack(stack).ray_healthy()  # the session stack is untouched
        st.up()
        assert Storage(other).get_bytes("tests/keep.txt") == b"survives"
    finally:
        st.down()


def test_down_leaves_no_process_of_the_stack_behind(stack, tmp_path, monkeypatch):
    """A whole second stack (store, MLflow, Ray head), with Ray Serve's Python proxy as its
    ingress (`IMG2IMG_SERVE_INGRESS=proxy`; the session's stack runs HAProxy) serving a model,
    then down: no process runs in its state dir afterwards, Ray's retitled agents
    (`ray::DashboardAgent`, ...), Serve's proxy and replicas included."""
    import io

    import httpx
    import numpy as np
    import psutil
    from PIL import Image

    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling
    from tests.conftest import stack_env
    from tests.integration.conftest import encoded, register_tiny_autoencoder

    env = stack_env(tmp_path / "state3")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMG2IMG_SERVE_INGRESS", "proxy")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    other = get_settings()
    st = Stack(other)
    try:
        st.up()
        assert st.ray_healthy() and [s.detail for s in st.status()][2] == "embedded, Serve ingress proxy"
        version = register_tiny_autoencoder(other, "proxy-served", seed=3)
        deploy(other, f"proxy-served/{version}", ReplicaOptions(runtime="torch"),
               Scaling(min_replicas=1, max_replicas=1, num_cpus=1), wait_s=240)
        photo = np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        r = httpx.post(other.serve_url + "/enhance", content=encoded(Image.fromarray(photo)),
                       headers={"Content-Type": "image/png"}, timeout=120)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (56, 40)
        assert not [p for p in st._ray_processes() if p.name() == "haproxy"]
    finally:
        st.down()
    root = str(st.root)

    def ours():
        left = []
        for p in psutil.process_iter(["cwd", "cmdline"]):
            if p.info["cwd"] == root:
                left.append(" ".join(p.info["cmdline"] or [])[:80])
        return left

    deadline = time.time() + 10
    while ours() and time.time() < deadline:
        time.sleep(0.5)
    assert ours() == []
    assert stack.mlflow_uri != other.mlflow_uri and Stack(stack).ray_healthy()  # the session stack runs on


def test_ending_a_run_writes_nothing_to_stdout(stack, capfd):
    """MLflow's client prints "View run ... at: URL" when it ends a run on a tracking server; in
    our processes (every one imports cluster.settings) it must not, or `--json` output and pipes
    of the commands that end runs (`jobs status` of a lost driver, `jobs stop`) break."""
    from mlflow.tracking import MlflowClient

    from registry.tracking import experiment_id

    client = MlflowClient(stack.mlflow_uri)
    run = client.create_run(experiment_id(client, "integration"))
    capfd.readouterr()
    client.set_terminated(run.info.run_id, status="KILLED")
    assert capfd.readouterr().out == ""
