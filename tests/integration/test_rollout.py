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

from cluster.errors import Img2ImgError
from cluster.services import poll_until
from tests.integration.conftest import (
    champion_claim_text,
    encoded,
    endpoint_restored,
    register_tiny_autoencoder,
)

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
        assert time.time() < deadline, str(st)
        time.sleep(1)
    return st


@pytest.mark.parametrize("args, message", [
    (["canary", "--model", f"{NAME}/1", "--percent", "10"], "is the served champion"),
    (["canary", "--model", f"{NAME}/2", "--percent", "101"], "--percent must be between 0 and 100"),
    (["canary", "--model", f"{NAME}/2", "--percent", "-1"], "--percent must be between 0 and 100"),
    (["shadow", "--model", f"{NAME}/2", "--sample", "1.5"], "--sample must be between 0 and 1"),
    (["canary", "--model", f"{NAME}/99"], "no version '99'"),
    (["canary", "--model", "no-such-model/2"], "no-such-model"),
    (["canary", "--model", f"{NAME}/2", "--steps", "50,25"], "--steps must increase"),
    (["canary", "--model", f"{NAME}/2", "--steps", "5,x"], "--steps must be percentages"),
    (["canary", "--model", f"{NAME}/2", "--steps", "5,50", "--interval", "0"], "--interval must be"),
    (["canary", "--model", f"{NAME}/2", "--steps", "5,50", "--percent", "30"], "differs from the first of --steps"),
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
    # every request was sampled: each one compared, or skipped while the (lowest-priority) challenger was behind
    st = wait_status(settings, lambda s: s["comparison"]["pairs"] + s["skipped"] >= 30)
    assert st["comparison"]["pairs"] + st["skipped"] == 30 and st["comparison"]["pairs"] >= 4, st
    assert st["mode"] == "shadow" and st["challenger"]["errors"] == 0 and st["challenger"]["p50_s"] > 0
    other = np.asarray(Image.open(io.BytesIO(reference)))
    assert other.shape == (32, 32, 3) and st["comparison"]["identical"] == 0
    assert 0 < st["comparison"]["psnr_mean_db"] < 100  # two different networks: their outputs differ
    # a few before | champion | challenger images are kept in the rollout's run (4 per ingress replica)
    ml, deadline = MlflowClient(settings.mlflow_uri), time.time() + 60
    while len(triplets := ml.list_artifacts(st["run_id"], "triplets")) < 4:
        assert time.time() < deadline, triplets
        time.sleep(1)
    assert len(triplets) == 4 and all(t.path.endswith(".png") for t in triplets)  # one replica: 4, not 30
    image = Image.open(ml.download_artifacts(st["run_id"], triplets[0].path))
    assert image.mode == "RGB" and image.width > 3 * image.height // 2  # three images side by side
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
    with Load(settings.serve_url) as load, ThreadPoolExecutor(1) as pool:
        time.sleep(3)
        promoting = pool.submit(end, settings, "promote")
        # the champion claim is held until the ingress serves v2: a rollback meanwhile is refused
        assert poll_until(lambda: b"promoting the canary" in champion_claim_text(settings, NAME), 120, interval_s=0.05)
        with pytest.raises(Img2ImgError, match="another client is changing the champion"):
            rollback(settings, NAME)
        st = promoting.result(timeout=600)
        time.sleep(3)
    assert st["state"] == "promoted" and load.answers and {s for s, _ in load.answers} == {200}
    assert champion_claim_text(settings, NAME) == b""
    assert alias_version(settings, NAME, "champion") == "2"
    assert {r.headers["x-model-version"] for r in many(settings.serve_url, 20)} == {"2"}
    run = MlflowClient(settings.mlflow_uri).get_run(st["run_id"])
    assert run.data.tags["decision"] == "promoted" and run.info.status == "FINISHED"
    card = MlflowClient(settings.mlflow_uri).get_model_version(NAME, "2").description
    assert f"promoted after a live rollout: MLflow run {st['run_id']}" in card
    assert rollback(settings, NAME)[0] == "1"  # the history kept v1


def test_a_start_that_fails_once_its_run_is_open_ends_the_run_and_the_challenger(served, monkeypatch):
    """A challenger that does not start in time, then Serve refusing the plan's declaration (one
    PUT made to fail here): no rollout runs, the challenger app is gone, and the rollout's MLflow
    run ends FAILED with the reason, not RUNNING."""
    import serving.rollouts as rollouts

    settings, puts, real_put = served, [], rollouts._put
    with pytest.raises(Img2ImgError, match="did not start within 0s"):  # a challenger given no time to start
        rollouts.start(settings, "canary", challenger(settings), percent=20, wait_s=0.2)
    assert rollouts.CHALLENGER_APP not in rollouts._apps(settings)

    def put(s, apps):
        puts.append(apps)
        if len(puts) == 2:  # the plan's: the challenger app has started, the run is open
            raise Img2ImgError("Ray Serve API answered 503: injected")
        return real_put(s, apps)

    monkeypatch.setattr(rollouts, "_put", put)
    with pytest.raises(Img2ImgError, match="injected"):
        rollouts.start(settings, "canary", challenger(settings), percent=20)
    monkeypatch.undo()
    assert rollouts.CHALLENGER_APP not in rollouts._apps(settings)
    run = MlflowClient(settings.mlflow_uri).search_runs(
        [MlflowClient(settings.mlflow_uri).get_experiment_by_name("rollouts").experiment_id],
        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FAILED" and "did not start" in run.data.tags["reason"] and "injected" in run.data.tags["reason"]
    assert {r.status_code for r in many(settings.serve_url, 6)} == {200}
    assert rollouts.start(settings, "canary", challenger(settings), percent=20)["state"] == "canary"  # nothing left held
    assert rollouts.end(settings, "abort")["state"] == "aborted"


def served_version(settings) -> str:
    from serving.deploy import status

    return str(status(settings)["version"])


def challenger(settings) -> str:
    """v1 or v2, whichever is not served (the promote test makes v2 the champion)."""
    return f"{NAME}/{'1' if served_version(settings) == '2' else '2'}"


def test_two_clients_starting_a_rollout_at_once_end_well(served):
    """Both start a canary at the same moment: one starts it, the other gets one line naming it."""
    from cluster.errors import Img2ImgError
    from serving.rollouts import end, start

    settings = served
    gate = threading.Barrier(2)

    def client(_):
        gate.wait()
        try:
            return start(settings, "canary", challenger(settings), percent=20)
        except Img2ImgError as e:
            return e

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(client, range(2)))
    started = [r for r in results if isinstance(r, dict)]
    refused = [str(r) for r in results if isinstance(r, Img2ImgError)]
    assert len(started) == 1 and len(refused) == 1, results
    assert "another client is starting a canary" in refused[0] or "already running" in refused[0]
    assert "\n" not in refused[0]
    assert {r.status_code for r in many(settings.serve_url, 10)} == {200}
    assert end(settings, "abort")["id"] == started[0]["id"]


def test_a_stepped_canary_moves_its_share_by_itself_and_compares_the_outputs(served):
    from serving.rollout import Limits
    from serving.rollouts import end, start

    settings = served
    ref = challenger(settings)
    start(settings, "canary", ref, steps=[20, 60], interval_s=2,
          limits=Limits(min_requests=3, max_sharpness_change=1000))
    deadline = time.time() + 240
    while (st := wait_status(settings, lambda s: True))["percent"] < 60:
        assert time.time() < deadline, str(st)
        assert {r.status_code for r in many(settings.serve_url, 12, parallel=3)} == {200}
    assert st["state"] == "canary" and st["steps"]["step"] == 2 and "promote or abort" in st["steps"]["next_move"]
    share = np.mean([r.headers["x-model-version"] == ref.split("/")[1] for r in many(settings.serve_url, 60)])
    assert share > 0.4, share  # 60% now, not the first step's 20%
    c = wait_status(settings, lambda s: s["comparison"]["sharpness_ratio"] is not None)["comparison"]
    assert c["champion_sharpness"] > 0 and c["challenger_sharpness"] > 0
    final = end(settings, "abort")
    run = MlflowClient(settings.mlflow_uri).get_run(final["run_id"])
    assert run.data.metrics["challenger_percent"] == 60 and "output_sharpness_ratio" in run.data.metrics


def test_the_web_page_shows_the_rollout_and_sends_a_photo_to_either_version(served, tmp_path):
    """Headless Chromium (as tests/integration/test_web.py): during a canary the page shows the
    share and both versions' numbers, and "Answered by" sends the same photo to each version."""
    import shutil

    from playwright.sync_api import sync_playwright

    from serving.rollouts import end, start

    settings = served
    ref = challenger(settings)
    new, old = ref.split("/")[1], served_version(settings)
    start(settings, "canary", ref, percent=50)
    assert {r.status_code for r in many(settings.serve_url, 10)} == {200}
    path = tmp_path / "photo.png"
    path.write_bytes(BODY)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("IMG2IMG_CHROMIUM") or shutil.which("chromium"))
        try:
            page = browser.new_page()
            page.set_default_timeout(180_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(settings.serve_url + "/")
            page.wait_for_selector(f"#rollout-summary:has-text('challenger v{new}')")
            assert "answers 50% of requests" in page.inner_text("#rollout-summary")
            rows = page.inner_text("#rollout-rows")
            assert f"champion v{old}" in rows and f"challenger v{new}" in rows
            for version, expected in (("challenger", f"v{new} (the challenger)"), ("champion", f"v{old} (the champion)")):
                page.select_option("#version", version)
                page.set_input_files("#file", [])
                page.set_input_files("#file", str(path))
                page.wait_for_selector(f"#sizes:has-text('{expected}')")
            # both: the champion's answer on the left, the challenger's on the right, labelled
            page.select_option("#version", "both")
            page.set_input_files("#file", [])
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#sizes:has-text(\"Left: the champion's answer\")")
            assert page.inner_text("#tag-left") == f"Champion v{old}"
            assert page.inner_text("#tag-right") == f"Challenger v{new}"
            assert page.inner_text("#result-title") == "Champion / challenger"
            assert f"v{new} (the challenger)" in page.inner_text("#sizes")
            left, right = (page.evaluate(f"document.getElementById('{i}').src") for i in ("before-img", "after-img"))
            assert left.startswith("blob:") and right.startswith("blob:") and left != right
        finally:
            browser.close()
    assert not errors, errors
    end(settings, "abort")


def test_the_rollout_ledger_goes_with_the_app(served):
    """`serve rm` leaves no ledger replica behind (the fixture redeploys what was served before)."""
    from serving.deploy import remove, replica_pids
    from serving.rollout_ledger import LEDGER_DEPLOYMENT

    settings = served
    assert len(replica_pids(settings, deployment=LEDGER_DEPLOYMENT)) == 1
    assert remove(settings)
    deadline = time.time() + 120
    while replica_pids(settings, deployment=LEDGER_DEPLOYMENT):
        assert time.time() < deadline
        time.sleep(1)
