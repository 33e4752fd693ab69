"""Pipelines on the real stack: photos in a folder -> a promoted champion in one cluster job; a
re-run with nothing changed is all cache hits and trains nothing; a run that fails at evaluate
resumes there once fixed."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.integration
MODEL = "pipe-test"


def _spec(folder, force: bool = True, **evaluate) -> dict:
    """A tiny pipeline: 4 sample photos -> 64 px blurred pairs -> a 6-step autoencoder. Six steps
    leave its output far worse than its input, so the gate refuses it unless `force`."""
    return {"name": "pipe", "source": str(folder), "dataset": "pipe-photos", "model": MODEL,
            "ingest": {"degrade": "gaussian:1.5", "size": 64, "crops": 2, "val_fraction": 0.25, "shard_rows": 32},
            "train": {"variant": "autoencoder", "workers": 1, "cpus_per_worker": 0.5, "max_steps": 6,
                      "batch_size": 4, "image_size": 64, "set": {"nf": 8}, "checkpoint_every": "6",
                      "experiment": "integration"},
            "evaluate": {"workers": 1, "cpus_per_worker": 0.5, **evaluate}, "gate": {"force": force}}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from jobs.data.sources import list_sample

    folder = tmp_path_factory.mktemp("pipe-photos")
    for f in [f for f in list_sample() if f.key.endswith(".png")][:4]:
        shutil.copy(f.location, folder / f.key)
    return folder


def _write(tmp_path, spec: dict):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _status(cli) -> dict:
    r = cli("pipeline", "status", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _train_jobs(stack) -> int:
    from jobs.training.client import job_client

    return sum((j.metadata or {}).get("img2img") == "train" for j in job_client(stack).list_jobs())


@pytest.fixture(scope="module")
def first_run(stack, photos, tmp_path_factory):
    from typer.testing import CliRunner

    from img2img_cli.app import app

    path = _write(tmp_path_factory.mktemp("pipe-file"), _spec(photos))
    r = CliRunner().invoke(app, ["pipeline", "run", str(path)], catch_exceptions=False)
    return path, r


def test_pipeline_makes_a_promoted_champion(stack, cli, first_run):
    from registry.models import CHAMPION, alias_version, versions

    path, r = first_run
    assert r.exit_code == 0, r.output
    status = _status(cli)
    assert status["state"] == "FINISHED", status
    assert [s["step"] for s in status["steps"]] == ["ingest", "train", "evaluate", "gate", "deploy", "promote"]
    assert all(s["state"] == "done" and not s["cached"] for s in status["steps"]), status["steps"]
    trained = next(s for s in status["steps"] if s["step"] == "train")["outputs"]["version"]
    assert [v.version for v in versions(stack, MODEL)] == [trained]
    assert alias_version(stack, MODEL, CHAMPION) == trained
    assert f"{MODEL} v{trained} is champion" in status["outcome"]
    evaluate = next(s for s in status["steps"] if s["step"] == "evaluate")["outputs"]
    assert evaluate["eval_set"] == "pipe-photos/val" and float(evaluate["psnr"]) > 0
    gate = next(s for s in status["steps"] if s["step"] == "gate")["outputs"]
    assert "makes images worse than its input" in gate["warnings"]  # promoted because the file forces it
    deploy = next(s for s in status["steps"] if s["step"] == "deploy")["outputs"]
    assert deploy["deployed"] == "no"  # the endpoint serves nothing in this session: left alone


def test_rerun_with_nothing_changed_is_all_cache_hits(stack, cli, first_run):
    path, first = first_run
    assert first.exit_code == 0, first.output
    jobs_before, versions_before = _train_jobs(stack), _versions(stack)
    r = cli("pipeline", "run", path)
    assert r.exit_code == 0, r.output
    status = _status(cli)
    assert status["state"] == "FINISHED"
    assert all(s["state"] == "done" and s["cached"] for s in status["steps"]), status["steps"]
    assert _train_jobs(stack) == jobs_before and _versions(stack) == versions_before


def test_two_clients_running_the_same_pipeline_at_once_both_end_well(stack, first_run):
    """Two people run the same file at the same moment: both pipelines finish, each a cache hit
    at every step, and nothing is trained twice."""
    import os
    import subprocess
    import sys

    from pipelines import record

    path, first = first_run
    assert first.exit_code == 0, first.output
    jobs_before, runs_before = _train_jobs(stack), len(record.pipelines(stack.mlflow_uri, limit=200))
    procs = [subprocess.Popen([sys.executable, "-m", "img2img_cli", "pipeline", "run", str(path)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and not any("Traceback" in o for o in outs), outs
    runs = record.pipelines(stack.mlflow_uri, limit=200)
    assert len(runs) == runs_before + 2
    for v in runs[:2]:
        full = record.pipeline(stack.mlflow_uri, v.job_id)
        assert full.state == "FINISHED" and all(s.cached for s in full.steps), full
    assert _train_jobs(stack) == jobs_before


def _versions(stack) -> list[str]:
    from registry.models import versions

    return [v.version for v in versions(stack, MODEL)]


def test_failed_evaluate_resumes_there(stack, cli, first_run, photos, tmp_path):
    from jobs.data.ingest import IngestOptions, ingest

    assert first_run[1].exit_code == 0, first_run[1].output
    # A dataset with no val rows: evaluating its val split fails in the evaluate step.
    noval = tmp_path / "noval"
    noval.mkdir()
    shutil.copy(next(photos.iterdir()), noval / "one.png")
    Image.open(noval / "one.png").verify()
    ingest(str(noval), IngestOptions(name="pipe-noval", degrade="gaussian:1.5", size=64, crops=2, val_fraction=0.0),
           stack)
    jobs_before = _train_jobs(stack)
    r = cli("pipeline", "run", _write(tmp_path, _spec(photos, dataset="pipe-noval", split="val")))
    assert r.exit_code == 1, r.output
    failed = _status(cli)
    assert failed["state"] == "FAILED" and failed["error"].startswith("evaluate: ")
    assert "no rows in split 'val'" in failed["error"], failed["error"]
    assert [(s["step"], s["state"], s["cached"]) for s in failed["steps"]] == [
        ("ingest", "done", True), ("train", "done", True), ("evaluate", "failed", False)]

    r = cli("pipeline", "run", _write(tmp_path, _spec(photos, dataset="pipe-noval", split="train")))
    assert r.exit_code == 0, r.output
    fixed = _status(cli)
    steps = {s["step"]: s for s in fixed["steps"]}
    assert steps["ingest"]["cached"] and steps["train"]["cached"]
    assert steps["evaluate"]["state"] == "done" and not steps["evaluate"]["cached"]
    assert steps["evaluate"]["outputs"]["eval_set"] == "pipe-noval/train"
    assert _train_jobs(stack) == jobs_before  # resumed at evaluate: nothing trained again


def test_gate_refusal_keeps_the_champion_and_is_no_failure_and_tells_the_webhook(stack, cli, first_run, photos,
                                                                                  tmp_path):
    from registry.models import CHAMPION, alias_version
    from tests.unit.test_pipeline_notify import _Hook

    assert first_run[1].exit_code == 0, first_run[1].output
    champion = alias_version(stack, MODEL, CHAMPION)
    hook = _Hook([200])
    try:
        r = cli("pipeline", "run", _write(tmp_path, {**_spec(photos, force=False), "notify": {"webhook": hook.url}}),
                "--force", "train")
    finally:
        hook.close()
    assert r.exit_code == 0, r.output
    status = _status(cli)
    assert status["state"] == "FINISHED", status
    steps = {s["step"]: s for s in status["steps"]}
    assert list(steps) == ["ingest", "train", "evaluate", "gate"]  # no deploy, no promote
    assert steps["ingest"]["cached"] and not steps["train"]["cached"]
    candidate = steps["train"]["outputs"]["version"]
    gate = steps["gate"]["outputs"]
    assert gate["decision"] == "keep"
    assert status["outcome"].startswith(
        f"kept champion v{champion}: candidate v{candidate} scored {float(gate['candidate_score']):.2f} dB vs "
        f"{float(gate['champion_score']):.2f} dB on pipe-photos/val"), status["outcome"]
    assert status["outcome"] in r.output
    assert alias_version(stack, MODEL, CHAMPION) == champion
    # the webhook heard the decision, once, and the delivery is recorded (the URL's token is not)
    assert len(hook.bodies) == 1, hook.bodies
    body = hook.bodies[0]
    assert (body["status"], body["decision"], body["outcome"]) == ("FINISHED", "keep", status["outcome"]), body
    assert (body["candidate"], body["champion"], body["id"]) == (candidate, champion, status["id"]), body
    assert status["notified"].startswith("delivered to 127.0.0.1:") and "SECRET" not in status["notified"], status
    assert f"webhook: {status['notified']}" in r.output


def _wait_for_run(stack, name: str, count: int, timeout: float = 600) -> list:
    """The finished runs of pipeline `name` (newest first) once there are `count` of them."""
    import time

    from pipelines import record

    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [v for v in record.pipelines(stack.mlflow_uri) if v.name == name and v.state != "RUNNING"]
        if len(runs) >= count:
            return runs
        time.sleep(3)
    raise TimeoutError(f"pipeline {name} did not finish {count} run(s) in {timeout:.0f}s")


def test_schedule_on_new_data_runs_again_when_photos_land_and_outlives_the_client(stack, cli, photos, tmp_path):
    from cluster.storage import Storage

    store = Storage(stack)
    prefix = "incoming/pipe-watch/"
    files = sorted(photos.iterdir())
    for f in files[:2]:
        store.put_bytes(prefix + f.name, f.read_bytes())
    source = f"s3://{stack.bucket}/{prefix}"
    spec = {"name": "watch", "source": source, "dataset": "pipe-watch", "steps": ["ingest"],
            "ingest": {"degrade": "gaussian:1.5", "size": 64, "crops": 1, "val_fraction": 0.0}}
    r = cli("pipeline", "schedule", _write(tmp_path, spec), "--on-new-data", source, "--debounce", "2",
            "--poll", "2")
    assert r.exit_code == 0, r.output
    listed = json.loads(cli("pipeline", "schedules", "--json").output)
    sid = next(s["id"] for s in listed if s["name"] == "watch")
    try:
        first = _wait_for_run(stack, "watch", 1)[0]
        assert first.state == "FINISHED", first
        assert first.steps[0].outputs["rows"] == "2"
        # The client has long returned; the schedule still watches. A new photo lands:
        store.put_bytes(prefix + files[2].name, files[2].read_bytes())
        second = _wait_for_run(stack, "watch", 2)[0]
        assert second.state == "FINISHED" and not second.steps[0].cached
        assert second.steps[0].outputs["rows"] == "3"
        assert sid in {s["id"] for s in json.loads(cli("pipeline", "schedules", "--json").output)}
    finally:
        r = cli("pipeline", "unschedule", sid)
    assert r.exit_code == 0, r.output
    assert sid not in {s["id"] for s in json.loads(cli("pipeline", "schedules", "--json").output)}


def test_stop_ends_the_pipeline_and_its_running_step_job(stack, cli, photos, tmp_path):
    import time

    from jobs.training.client import job_client
    from pipelines import record

    spec = _spec(photos)
    spec.update(name="pipe-stop", model="pipe-stop")
    spec["train"] = {**spec["train"], "max_steps": 100000, "time_budget_s": 900}
    r = cli("pipeline", "run", _write(tmp_path, spec), "--detach")
    assert r.exit_code == 0, r.output
    deadline = time.time() + 600
    while time.time() < deadline:  # until its train step's job is submitted
        v = record.pipelines(stack.mlflow_uri, limit=5)[0]
        train = next((s for s in v.steps if s.step == "train" and s.job_id), None)
        if train:
            break
        time.sleep(2)
    assert train, v
    r = cli("pipeline", "stop", v.job_id)
    assert r.exit_code == 0, r.output
    status = _status(cli)
    assert status["id"] == v.job_id and status["state"] == "KILLED", status
    assert status["error"] == "train: stopped by the user"
    assert str(job_client(stack).get_job_status(train.job_id)).split(".")[-1] == "STOPPED"
    assert cli("pipeline", "stop", v.job_id).output.strip().endswith("already KILLED")


def test_a_driver_started_without_a_client_records_its_own_run(stack, cli, first_run):
    """What KubeRay's RayCronJob does (cluster/deploy/kuberay/raycronjob-pipeline.yaml): submit the
    driver with only its spec; the run it records is listed with its Ray job id."""
    import shlex

    from cluster.admission import ray_submit
    from jobs.training.client import job_client
    from pipelines.client import pipeline_env
    from pipelines.spec import parse
    from tests.integration.conftest import wait_job

    assert first_run[1].exit_code == 0, first_run[1].output
    spec = parse({"name": "pipe-cron", "dataset": "pipe-photos", "model": MODEL, "steps": ["deploy"]})
    client = job_client(stack)
    job = ray_submit(client, entrypoint=f"python -m pipelines.driver --spec {shlex.quote(spec.to_json())}",
                     runtime_env=pipeline_env(stack), metadata={}, resources=None)
    assert wait_job(client, job, timeout=300) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    status = json.loads(cli("pipeline", "status", job, "--json").output)
    assert (status["id"], status["name"], status["state"]) == (job, "pipe-cron", "FINISHED"), status
    assert [s["step"] for s in status["steps"]] == ["deploy"]


def test_a_canary_deploy_promotes_under_traffic_and_a_failing_candidate_keeps_the_champion(stack, cli, blur_dataset,
                                                                                            tmp_path):
    """deploy with `rollout: canary` on the served model: under live traffic the candidate steps
    50% -> 100%, holds, and is promoted (champion, served); a candidate that fails every request
    aborts its canary by itself, and the pipeline ends FINISHED keeping the champion, with the
    reason. Every request of both runs is answered 200."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import numpy as np
    from mlflow.tracking import MlflowClient

    from registry.models import CHAMPION, alias_version
    from serving.deploy import deploy
    from serving.deploy import status as serve_status
    from serving.options import Scaling
    from tests.integration.conftest import encoded, endpoint_restored, register_tiny_autoencoder

    name = "pipe-canary"
    assert [register_tiny_autoencoder(stack, name, seed) for seed in (1, 2)] == ["1", "2"]
    MlflowClient(stack.mlflow_uri).set_registered_model_alias(name, CHAMPION, "1")
    body = encoded(Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    spec = {"name": "pipe-canary", "dataset": blur_dataset, "model": name, "steps": ["deploy", "promote"],
            "deploy": {"rollout": "canary", "steps": "50,100", "interval": "3s", "timeout": "4m",
                       "limits": {"min_requests": 3, "max_sharpness_change": 1000}}}
    path = _write(tmp_path, spec)

    def run_under_load() -> tuple[dict, set]:
        r = cli("pipeline", "run", path, "--detach")
        assert r.exit_code == 0, r.output
        codes, deadline = set(), time.time() + 400
        with ThreadPoolExecutor(3) as pool:
            while (status := _status(cli))["state"] in ("QUEUED", "RUNNING"):
                assert time.time() < deadline, status
                answers = pool.map(lambda _: httpx.post(stack.serve_url + "/enhance", content=body, timeout=120,
                                                        headers={"Content-Type": "image/png"}), range(6))
                codes |= {a.status_code for a in answers}
        return status, codes

    with endpoint_restored(stack):
        deploy(stack, f"{name}@champion", scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        status, codes = run_under_load()
        assert status["state"] == "FINISHED" and codes == {200}, (status, codes)
        steps = {s["step"]: s for s in status["steps"]}
        assert steps["deploy"]["outputs"]["rollout"] == "promoted", steps["deploy"]
        assert f"{name} v2 is champion" in status["outcome"] and "(unchanged)" not in status["outcome"]
        assert alias_version(stack, name, CHAMPION) == "2" and str(serve_status(stack)["version"]) == "2"

        client = MlflowClient(stack.mlflow_uri)  # v3: a version whose model files do not exist
        run = client.create_run(client.get_experiment_by_name("integration").experiment_id)
        client.log_text(run.info.run_id, "no weights here", "model/README.txt")
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        status, codes = run_under_load()
        assert status["state"] == "FINISHED" and codes == {200}, (status, codes)
        assert status["outcome"].startswith("kept champion v2: the canary of v3 aborted: "), status["outcome"]
        assert "error rate" in status["outcome"]
        assert [s["step"] for s in status["steps"]] == ["deploy"]  # promote never ran
        assert alias_version(stack, name, CHAMPION) == "2" and str(serve_status(stack)["version"]) == "2"


def test_scheduled_runs_serve_a_better_candidate_and_keep_the_champion_against_a_worse_one(stack, cli, demo_run,
                                                                                          photos, tmp_path):
    """Two schedules on photos in the object store, each the whole pipeline up to the served model.
    One fine-tunes the demo's trained nafnet (`init_from`): better than the served champion, it is
    promoted and the endpoint answers with it. The other trains 6 steps from scratch: worse than
    its input, the gate keeps the champion, which the endpoint goes on serving."""
    import httpx
    import numpy as np
    from mlflow.tracking import MlflowClient

    from cluster.storage import Storage
    from registry.models import CHAMPION, alias_version
    from serving.deploy import deploy
    from serving.deploy import status as serve_status
    from serving.options import Scaling
    from tests.integration.conftest import encoded, endpoint_restored, register_tiny_autoencoder

    name, store, files = "pipe-sched", Storage(stack), sorted(photos.iterdir())
    assert register_tiny_autoencoder(stack, name, seed=1) == "1"  # untrained: far worse than its input
    MlflowClient(stack.mlflow_uri).set_registered_model_alias(name, CHAMPION, "1")
    body = encoded(Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)))

    def served() -> str:
        r = httpx.post(stack.serve_url + "/enhance", content=body, headers={"Content-Type": "image/png"}, timeout=120)
        assert r.status_code == 200, r.text
        return r.headers["x-model-version"]

    def scheduled_run(prefix: str, train: dict):
        for f in files[:2]:
            store.put_bytes(prefix + f.name, f.read_bytes())
        source = f"s3://{stack.bucket}/{prefix}"
        spec = {**_spec(photos, force=False), "name": prefix.strip("/").rsplit("/")[-1], "source": source,
                "dataset": name, "model": name, "train": train}
        r = cli("pipeline", "schedule", _write(tmp_path, spec), "--on-new-data", source, "--debounce", "2",
                "--poll", "2")
        assert r.exit_code == 0, r.output
        sid = next(s["id"] for s in json.loads(cli("pipeline", "schedules", "--json").output)
                   if s["name"] == spec["name"])
        try:
            run = _wait_for_run(stack, spec["name"], 1)[0]
        finally:
            assert cli("pipeline", "unschedule", sid).exit_code == 0
        return run, json.loads(cli("pipeline", "status", run.job_id, "--json").output)

    tiny = {"workers": 1, "cpus_per_worker": 0.5, "batch_size": 2, "image_size": 64, "experiment": "integration"}
    with endpoint_restored(stack):
        deploy(stack, f"{name}@champion", scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        assert served() == "1"

        # A near-zero learning rate: two steps at the parent's rate on one batch of 2 crops can undo
        # its gain on the one validation crop, and this test is about the schedule, not fine-tuning.
        run, status = scheduled_run("incoming/pipe-better/", {
            **tiny, "init_from": f"{demo_run.model}/{demo_run.version}", "max_steps": 2, "checkpoint_every": "2",
            "set": {"lr": 1e-7}})
        assert run.state == "FINISHED", status
        steps = {s["step"]: s for s in status["steps"]}
        assert list(steps) == ["ingest", "train", "evaluate", "gate", "deploy", "promote"], (
            status.get("outcome"), steps.get("gate", {}).get("outputs"), demo_run.rows)
        candidate = steps["train"]["outputs"]["version"]
        assert candidate == "2" and steps["train"]["outputs"]["parent"] == f"{demo_run.model}/{demo_run.version}"
        assert steps["gate"]["outputs"]["decision"] == "promote", steps["gate"]
        assert steps["deploy"]["outputs"] == {"deployed": "yes", "version": "2"}, steps["deploy"]
        assert alias_version(stack, name, CHAMPION) == "2" and str(serve_status(stack)["version"]) == "2"
        assert served() == "2"

        run, status = scheduled_run("incoming/pipe-worse/", {
            **tiny, "variant": "autoencoder", "max_steps": 6, "checkpoint_every": "6", "set": {"nf": 8}})
        assert run.state == "FINISHED", status  # a refusal is a decision, not a failure
        steps = {s["step"]: s for s in status["steps"]}
        assert list(steps) == ["ingest", "train", "evaluate", "gate"], status
        assert steps["train"]["outputs"]["version"] == "3" and steps["gate"]["outputs"]["decision"] == "keep"
        assert status["outcome"].startswith("kept champion v2: candidate v3 scored "), status["outcome"]
        assert alias_version(stack, name, CHAMPION) == "2" and served() == "2"
