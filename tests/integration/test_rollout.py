"""Safe rollouts on the real stack (docs/rolling-out.md): two tiny autoencoders that differ (v1
champion, v2 challenger) and a v3 whose weights cannot load. A canary's share answers with the
challenger's X-Model-Version; a challenger failing every request aborts the rollout by itself
while no request fails; a shadow leaves every answer byte-identical to the champion's while the
comparison fills; promote and abort under concurrent requests drop nothing."""

import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.integration.conftest import encoded, endpoint_restored, register_tiny_autoencoder

pytestmark = pytest.mark.integration
NAME = "rollout-tiny"
BODY = encoded(Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def served(stack):
    """rollout-tiny v1 (champion, served), v2 (other weights), v3 (a version whose model files
    do not exist: every load fails) -> the Settings."""
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from serving.options import Scaling

    settings = get_settings()
    assert [register_tiny_autoencoder(stack, NAME, seed) for seed in (1, 2)] == ["1", "2"]
    client = MlflowClient(stack.mlflow_uri)
    run = client.create_run(client.get_experiment_by_name("integration").experiment_id)
    client.log_text(run.info.run_id, "no weights here", "model/README.txt")  # a version no loader can load
    client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", "1")
    with endpoint_restored(settings):
        deploy(settings, f"{NAME}@champion", scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        yield settings


def post(url: str) -> httpx.Response:
    return httpx.post(url + "/enhance", content=BODY, headers={"Content-Type": "image/png"}, timeout=300)


def many(url: str, n: int, parallel: int = 6) -> list[httpx.Response]:
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: post(url), range(n)))


class Load:
    """Requests sent back to back from 4 threads until stopped -> every status and version."""

    def __init__(self, url: str):
        self.url, self.stop, self.answers = url, threading.Event(), []
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self):
        while not self.stop.is_set():
            try:
                r = post(self.url)
                self.answers.append((r.status_code, r.headers.get("x-model-version")))
            except httpx.HTTPError as e:
                self.answers.append((type(e).__name__, None))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=600)


def wait_status(settings, done, timeout=180):
    from serving.rollouts import status

    deadline = time.time() + timeout
    while not done(st := status(settings)):
        assert time.time() < deadline, st
        time.sleep(1)
    return st


@pytest.mark.parametrize("args, message", [
    (["canary", "--model", f"{NAME}/1", "--percent", "10"], "is the served champion"),
    (["canary", "--model", f"{NAME}/2", "--percent", "101"], "--percent must be between 0 and 100"),
    (["canary", "--model", f"{NAME}/2", "--percent", "-1"], "--percent must be between 0 and 100"),
    (["shadow", "--model", f"{NAME}/2", "--sample", "1.5"], "--sample must be between 0 and 1"),
    (["canary", "--model", f"{NAME}/99"], "no version '99'"),
    (["canary", "--model", "no-such-model/2"], "no-such-model"),
    (["rollout", "promote"], "no rollout is running"),
    (["rollout", "abort"], "no rollout is running"),
])
def test_bad_rollout_requests_get_one_line_errors(served, cli, args, message):
    r = cli("serve", *args)
    assert r.exit_code == 1 and "Error:" in r.output and message in r.output and "Traceback" not in r.output, r.output


def test_canary_answers_its_share_and_abort_under_load_drops_nothing(served):
    from serving.rollouts import end, start, status

    settings = served
    v1 = post(settings.serve_url)
    assert v1.status_code == 200 and v1.headers["x-model-version"] == "1"
    start(settings, "canary", f"{NAME}/2", percent=30)
    with pytest.raises(Exception, match="already running"):
        start(settings, "canary", f"{NAME}/2", percent=30)
    answers = many(settings.serve_url, 150)
    assert {r.status_code for r in answers} == {200}
    by_version = {r.headers["x-model-version"]: r.content for r in answers}
    share = sum(r.headers["x-model-version"] == "2" for r in answers) / len(answers)
    assert 0.2 <= share <= 0.4, share
    assert by_version["1"] == v1.content and by_version["2"] != v1.content  # the challenger's own output
    st = wait_status(settings, lambda s: s["champion"]["requests"] + s["challenger"]["requests"] >= 150)
    assert st["state"] == "canary" and st["challenger"]["errors"] == 0 and st["challenger"]["p95_s"] > 0
    with Load(settings.serve_url) as load:
        time.sleep(3)
        end(settings, "abort")
        time.sleep(3)
    assert load.answers and {s for s, _ in load.answers} == {200}
    assert {r.headers["x-model-version"] for r in many(settings.serve_url, 20)} == {"1"}
    assert status(settings)["state"] == "aborted"


def test_a_challenger_failing_every_request_aborts_itself_and_no_request_fails(served):
    from serving.rollouts import end, start

    settings = served
    plan = start(settings, "canary", f"{NAME}/3", percent=50)
    answers = many(settings.serve_url, 60)
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["x-model-version"] for r in answers} == {"1"}
    st = wait_status(settings, lambda s: s["state"] == "aborted")
    assert st["decided_by"] == "automatic" and "error rate" in st["reason"] and st["fallbacks"] >= 10
    run = MlflowClient(settings.mlflow_uri).get_run(plan["run_id"])
    assert run.data.tags["decision"] == "aborted" and run.data.tags["challenger_version"] == "3"
    assert run.data.metrics["challenger_errors"] >= 10
    with pytest.raises(Exception, match="aborted itself"):
        end(settings, "promote")
    assert end(settings, "abort")["state"] == "aborted"


def test_shadow_leaves_every_answer_the_champions_while_the_comparison_fills(served):
    from serving.rollouts import end, start

    settings = served
    reference = post(settings.serve_url).content
    start(settings, "shadow", f"{NAME}/2", sample=1.0)
    answers = many(settings.serve_url, 30, parallel=3)
    assert all(r.status_code == 200 and r.content == reference and r.headers["x-model-version"] == "1"
               for r in answers)
    st = wait_status(settings, lambda s: s["comparison"]["pairs"] >= 30)
    assert st["mode"] == "shadow" and st["challenger"]["errors"] == 0 and st["challenger"]["p50_s"] > 0
    other = np.asarray(Image.open(io.BytesIO(reference)))
    assert other.shape == (32, 32, 3) and st["comparison"]["identical"] == 0
    assert 0 < st["comparison"]["psnr_mean_db"] < 100  # two different networks: their outputs differ
    end(settings, "abort")


def test_a_killed_challenger_replica_fails_no_request(served):
    """SIGKILL the challenger's replica while a canary sends it half the requests: the requests
    it held and those routed to it before Serve replaces it are answered by the champion."""
    from serving.configs import CHALLENGER_APP
    from serving.deploy import replica_pids
    from serving.rollouts import end, start

    settings = served
    start(settings, "canary", f"{NAME}/2", percent=50)
    assert "2" in {r.headers["x-model-version"] for r in many(settings.serve_url, 20)}
    (pid,) = replica_pids(settings, CHALLENGER_APP)
    with Load(settings.serve_url) as load:
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
        time.sleep(8)
    assert len(load.answers) > 10 and {s for s, _ in load.answers} == {200}
    assert end(settings, "abort")["challenger"]["requests"] > 0


def test_promote_under_load_drops_nothing_and_the_registry_keeps_the_old_champion(served):
    from registry.models import alias_version, rollback
    from serving.rollouts import end, start

    settings = served
    start(settings, "canary", f"{NAME}/2", percent=30)
    with Load(settings.serve_url) as load:
        time.sleep(3)
        st = end(settings, "promote")
        time.sleep(3)
    assert st["state"] == "promoted" and load.answers and {s for s, _ in load.answers} == {200}
    assert alias_version(settings, NAME, "champion") == "2"
    assert {r.headers["x-model-version"] for r in many(settings.serve_url, 20)} == {"2"}
    run = MlflowClient(settings.mlflow_uri).get_run(st["run_id"])
    assert run.data.tags["decision"] == "promoted" and run.info.status == "FINISHED"
    card = MlflowClient(settings.mlflow_uri).get_model_version(NAME, "2").description
    assert f"promoted after a live rollout: MLflow run {st['run_id']}" in card
    assert rollback(settings, NAME)[0] == "1"  # the history kept v1
