"""Two Ray nodes on one machine: the `stack` fixture's head plus a second raylet started with
`img2img stack join` (its own state dir, 2 CPUs). An evaluation's Scorer actors run on both
nodes. A 2-worker `--spread` training puts one worker on each node; the second node's raylet is
SIGKILLed mid-run and the job must still end SUCCEEDED at the requested step count, after Ray
Train restored a checkpoint at a step above 0. Two Serve replicas, one on each node: the joined
node dies under 30 s of load through the retrying client and no request is lost. A training job
bigger than the head (its workers reserve their CPUs in their placement group) runs on both nodes;
when its node dies it waits for capacity, then resumes on a node that joins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.integration.conftest import endpoint_restored, register_tiny_autoencoder, wait_job

JOIN_CPUS = 2
MAX_STEPS = 120


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "img2img_cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _joined(stack, tmp_path_factory, name: str, cpus: int = JOIN_CPUS):
    """A worker node of `cpus` CPUs joined to the stack's head with `stack join`; left (and its
    processes gone) at teardown. Yields (its env, its state dir)."""
    keys = json.loads((stack.state_path / "credentials.json").read_text())
    root = tmp_path_factory.mktemp(name) / "state"
    env = {**os.environ, "IMG2IMG_STATE_DIR": str(root), "IMG2IMG_S3_ACCESS_KEY": keys["access_key"],
           "IMG2IMG_S3_SECRET_KEY": keys["secret_key"]}
    env.pop("RAY_AUTH_TOKEN", None)
    r = _cli(env, "stack", "join", "--head", stack.ray_address, "--num-cpus", str(cpus),
             "--token-file", str(stack.ray_token_path))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield env, root
    finally:
        _cli(env, "stack", "leave", timeout=120)


@pytest.fixture(scope="module")
def second_node(stack, tmp_path_factory):
    """The module's joined node (the training test kills it). -> (its env, its state dir)."""
    yield from _joined(stack, tmp_path_factory, "node2")


@pytest.fixture
def fresh_node(stack, tmp_path_factory):
    """A node joined for one test. -> (its env, its state dir)."""
    yield from _joined(stack, tmp_path_factory, "node3")


@pytest.fixture
def roomy_node(stack, tmp_path_factory):
    """A node of 3 CPUs joined for one test: room for a 1-worker job's whole reservation (2.5).
    -> (its env, its state dir)."""
    yield from _joined(stack, tmp_path_factory, "node5", cpus=3)


def _nodes(env: dict) -> list[dict]:
    r = _cli(env, "stack", "status", "--json", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["nodes"]


def test_a_joined_node_is_listed_and_a_second_join_is_refused(stack, second_node):
    env, _ = second_node
    deadline = time.time() + 60
    while len(nodes := [n for n in _nodes(env) if n["alive"]]) < 2 and time.time() < deadline:
        time.sleep(2)
    assert sorted((n["head"], n["cpus"], n["admission_cpus"]) for n in nodes) == [
        (False, JOIN_CPUS, JOIN_CPUS), (True, 8, 8)]
    again = _cli(env, "stack", "join", "--head", stack.ray_address, "--token-file", str(stack.ray_token_path))
    assert again.returncode == 1 and "already runs a node joined to" in again.stderr + again.stdout
    bad = {**env, "IMG2IMG_STATE_DIR": str(stack.state_path.parent / "node-bad")}
    (stack.state_path.parent / "wrong-token").write_text("not-the-token")
    wrong = _cli(bad, "stack", "join", "--head", stack.ray_address, "--token-file",
                 str(stack.state_path.parent / "wrong-token"))
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr + wrong.stdout


def _raylet(root) -> psutil.Process:
    temp = json.loads((root / "stack.json").read_text())["ray_temp_dir"]
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "raylet/raylet" in line and f"--temp_dir={temp}" in line:
            return p
    raise AssertionError(f"no raylet with temp dir {temp}")


def _train_workers_under(raylet: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in raylet.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # a worker that exited (or a zombie) meanwhile
            continue
    return found


def _actor_nodes(settings, ray_job_id: str, class_part: str) -> list[str]:
    """Node ids of the job's actors (alive or dead) whose class name contains `class_part`."""
    r = httpx.get(settings.ray_address.rstrip("/") + "/api/v0/actors",
                  params={"detail": "true", "limit": 10000, "filter_keys": "job_id", "filter_predicates": "=",
                          "filter_values": ray_job_id}, headers=settings.ray_auth_headers(), timeout=30)
    rows = ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    return [a["node_id"] for a in rows if class_part in str(a.get("class_name", ""))]


def test_an_evaluation_scores_on_both_nodes(stack, blur_dataset, second_node):
    """Ray Data places the Scorer actors with SPREAD: 2 workers, one on each node."""
    from jobs.evaluation.client import evaluate
    from jobs.training.client import job_client

    version = register_tiny_autoencoder(stack, "test-multinode-eval", seed=3)
    out = evaluate(stack, f"test-multinode-eval/{version}", blur_dataset, "val", workers=2, cpus_per_worker=1.0)
    assert out["images"] > 0 and out["metrics"]["psnr"] > 0
    ray_job = job_client(stack).get_job_info(out["job_id"]).job_id
    nodes = _actor_nodes(stack, ray_job, "Scorer")
    assert len(nodes) >= 2 and len(set(nodes)) == 2, nodes


def test_training_survives_losing_a_node_from_its_last_checkpoint(stack, blur_dataset, second_node):
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec
    from registry.tracking import TAG_CHECKPOINT, TAG_NODE_LOST, TAG_RESTORED, TAG_STARTS

    _, root = second_node
    client, mlflow = job_client(stack), MlflowClient(stack.mlflow_uri)
    # 1 CPU per worker + 1 data CPU: the 8-CPU head alone can hold the job after the loss.
    spec = TrainSpec(dataset=blur_dataset, variant="autoencoder", config={"nf": 8}, image_size=32, batch_size=4,
                     lr=1e-3, max_steps=MAX_STEPS, checkpoint_every="4", log_every=1, workers=2, cpus_per_worker=1,
                     spread=True, stall_timeout_s=600, model_name="test-multinode", experiment="integration")
    sub = submit(spec, stack)
    raylet = _raylet(root)
    deadline, step, held, on_node = time.time() + 600, 0, None, []
    # past a checkpoint Ray Train holds (registered, not only uploaded), with a worker on the joined node
    while time.time() < deadline:
        run = mlflow.get_run(sub["run_id"])
        step, held = int(run.data.metrics.get("step", 0)), run.data.tags.get(TAG_CHECKPOINT)
        on_node = on_node or _train_workers_under(raylet)
        if held and on_node:
            break
        assert str(client.get_job_status(sub["job_id"])).endswith(("RUNNING", "PENDING")), client.get_job_logs(
            sub["job_id"])[-3000:]
        time.sleep(1)
    assert on_node, "no training worker was placed on the joined node"
    assert 4 <= int(held) <= step < MAX_STEPS, f"step {step}, checkpoint {held}: too late to lose the node mid-run"
    os.kill(raylet.pid, signal.SIGKILL)

    status = wait_job(client, sub["job_id"], timeout=900)
    logs = client.get_job_logs(sub["job_id"])
    assert status == "SUCCEEDED", logs[-4000:]
    run = mlflow.get_run(sub["run_id"])
    assert int(run.data.metrics["steps_run"]) == MAX_STEPS
    assert int(run.data.tags[TAG_STARTS]) >= 2
    assert int(held) <= int(run.data.tags[TAG_RESTORED]) < MAX_STEPS  # the checkpoint held at the loss, or a later one
    # the user was told which node was lost (the restart takes longer than Ray's health checks)
    assert run.data.tags[TAG_NODE_LOST].startswith("node ") and " lost at step " in run.data.tags[TAG_NODE_LOST]


def test_a_run_whose_step_stops_moving_ends_with_the_reason(stack, blur_dataset):
    """Every worker of the run frozen (SIGSTOP: a hung machine or collective, which Ray does not
    see as a failure) -> the job ends FAILED within its --stall-timeout, the reason on its run."""
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    client, mlflow = job_client(stack), MlflowClient(stack.mlflow_uri)
    spec = TrainSpec(dataset=blur_dataset, variant="autoencoder", config={"nf": 8}, image_size=32, batch_size=4,
                     lr=1e-3, max_steps=100_000, checkpoint_every="50", log_every=1, workers=2, cpus_per_worker=0.5,
                     stall_timeout_s=30, model_name="test-stall", experiment="integration")
    sub = submit(spec, stack)
    frozen: list[psutil.Process] = []
    try:
        deadline = time.time() + 600
        while time.time() < deadline and int(mlflow.get_run(sub["run_id"]).data.metrics.get("step", 0)) < 2:
            assert str(client.get_job_status(sub["job_id"])).endswith(("RUNNING", "PENDING"))
            time.sleep(1)
        frozen = [p for p in psutil.process_iter(["cmdline", "cwd"])
                  if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and sub["run_id"] in (p.info["cwd"] or "")]
        assert len(frozen) == 2, frozen
        for p in frozen:
            p.suspend()
        stopped_at = time.time()
        status = wait_job(client, sub["job_id"], timeout=600)
        ended_after = time.time() - stopped_at
    finally:
        for p in frozen:
            try:
                p.resume()
            except psutil.NoSuchProcess:
                pass
    run = mlflow.get_run(sub["run_id"])
    assert status == "FAILED" and run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("stalled: no training step for 30s at step "), run.data.tags["error"]
    assert ended_after < 300, f"ended {ended_after:.0f}s after the workers froze (stall timeout 30s)"


def _node_processes(root) -> list[psutil.Process]:
    """The joined node's raylet and every process under it (its workers, Serve replicas)."""
    raylet = _raylet(root)
    return [raylet, *raylet.children(recursive=True)]


def test_replicas_on_both_nodes_lose_no_request_when_a_node_dies(stack, fresh_node, tmp_path):
    """Two replicas, one on each node (Serve spreads them); 30 s of requests through the retrying
    client, the joined node's processes all SIGKILLed 8 s in: every request answers, and Serve
    brings the endpoint back to 2 replicas on the surviving node."""
    from serving.client import enhance_files
    from serving.deploy import deploy, remove, replica_pids
    from serving.options import Scaling

    _, root = fresh_node
    settings = stack
    version = register_tiny_autoencoder(settings, "test-multinode-serve", seed=4)
    with endpoint_restored(settings):
        # new replicas, placed now that there are two nodes: a running endpoint would keep its replica
        # on the head and only add one (a model change reconfigures replicas in place)
        remove(settings)
        deadline = time.time() + 150
        while replica_pids(settings) and time.time() < deadline:
            time.sleep(2)
        deploy(settings, f"test-multinode-serve/{version}", scaling=Scaling(min_replicas=2, max_replicas=2,
                                                                             num_cpus=0.5), wait_s=240)
        deadline = time.time() + 150
        while len(pids := replica_pids(settings)) != 2 and time.time() < deadline:
            time.sleep(2)
        on_node = {p.pid for p in _node_processes(root)}
        assert len(pids) == 2 and len(on_node & set(pids)) == 1, (pids, on_node, "one replica on each node")
        running = {n["head"]: n["running"] for n in _nodes(fresh_node[0]) if n["alive"]}  # as `stack status` shows
        assert all(any(k.startswith("ServeReplica:") for k in running[head]) for head in (True, False)), running
        files = []
        for i in range(8):
            files.append(tmp_path / f"{i}.png")
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(files[-1])
        t0, killed, results = time.time(), [], []

        def kill_node(outcome):
            if not killed and time.time() - t0 > 8:
                victims = _node_processes(root)
                for p in victims:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                killed.append(len(victims))

        while time.time() - t0 < 30:
            results += enhance_files(files, tmp_path / "out", settings.serve_url, parallel=4, on_done=kill_node)
        assert killed, "the node was never killed"
        assert results and [r.error for r in results if r.error] == []
        deadline = time.time() + 180  # the controller replaces the lost replica on the head
        while len(replica_pids(settings)) < 2 and time.time() < deadline:
            time.sleep(2)
        assert len(replica_pids(settings)) == 2


def test_a_job_whose_drivers_node_dies_says_so_ends_its_run_and_resumes_from_its_checkpoint(
        stack, blur_dataset, roomy_node, cli):
    """The head's admission CPUs all held by a placeholder job, so a 1-worker training (2.5) is
    admitted on the joined 3-CPU node with its driver there. Every process of that node is
    SIGKILLed after a checkpoint: Ray ends the job FAILED (it does not restart a driver);
    `jobs status` says the driver's node was lost and gives the resume command with the
    checkpoint's step, and the run is ended FAILED with that line. The command, run as given
    once the head has room, continues from that checkpoint, not from step 0."""
    from cluster.admission import RESOURCE, capacity
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec
    from registry.tracking import TAG_CHECKPOINT

    _, root = roomy_node
    client, mlflow = job_client(stack), MlflowClient(stack.mlflow_uri)
    deadline = time.time() + 120
    while len((cap := capacity(stack.ray_address, stack.ray_auth_headers())).per_node) < 2 and time.time() < deadline:
        time.sleep(2)
    used, total = max(cap.per_node, key=lambda n: n[1])  # the head: the largest node
    assert total - used > 3, cap  # more than the joined node has: the placeholder can only be on the head
    blocker = client.submit_job(entrypoint="sleep 900", entrypoint_resources={RESOURCE: total - used})
    try:
        spec = TrainSpec(dataset=blur_dataset, variant="autoencoder", config={"nf": 8}, image_size=32, batch_size=4,
                         lr=1e-3, max_steps=MAX_STEPS, checkpoint_every="4", log_every=1, workers=1,
                         cpus_per_worker=1, model_name="test-multinode-driver", experiment="integration")
        sub = submit(spec, stack)
        held, deadline = None, time.time() + 600
        while not held and time.time() < deadline:
            assert str(client.get_job_status(sub["job_id"])).endswith(("RUNNING", "PENDING")), client.get_job_logs(
                sub["job_id"])[-3000:]
            held = mlflow.get_run(sub["run_id"]).data.tags.get(TAG_CHECKPOINT)
            time.sleep(1)
        assert held, "no checkpoint within 600 s"
        driver_node = client.get_job_info(sub["job_id"]).driver_node_id
        assert driver_node == next(n["node_id"] for n in _nodes(roomy_node[0]) if not n["head"]), "driver on the head"
        for p in _node_processes(root):
            try:
                p.kill()
            except psutil.Error:
                pass
        assert wait_job(client, sub["job_id"], timeout=300) == "FAILED"

        r = cli("jobs", "status", sub["job_id"], "--json")
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        run = mlflow.get_run(sub["run_id"])
        held = run.data.tags[TAG_CHECKPOINT]  # the last one the run held
        command = f"img2img train -d {blur_dataset} --resume {sub['run_id']}"
        assert info["error"].startswith("the node running the job's driver at "), info
        assert info["error"].endswith(f"resume it from its checkpoint at step {held}: {command}"), info
        assert run.info.status == "FAILED" and run.data.tags["error"] == info["error"]
    finally:
        client.stop_job(blocker)

    # what `img2img train -d DATASET --resume RUN_ID` submits (the variant and config from the checkpoint)
    resumed = submit(TrainSpec(dataset=blur_dataset, variant="", resume=sub["run_id"], image_size=32, batch_size=4, lr=1e-3,
                               max_steps=MAX_STEPS, checkpoint_every="4", log_every=1, workers=1, cpus_per_worker=1,
                               model_name="test-multinode-driver", experiment="integration"), stack)
    status = wait_job(client, resumed["job_id"], timeout=600)
    assert status == "SUCCEEDED", client.get_job_logs(resumed["job_id"])[-3000:]
    steps = [m.step for m in mlflow.get_metric_history(resumed["run_id"], "step")]
    assert min(steps) > int(held) and max(steps) == MAX_STEPS, steps


def test_a_job_bigger_than_any_node_trains_across_nodes_and_waits_for_a_node_after_losing_one(
        stack, blur_dataset, fresh_node, tmp_path_factory):
    """4 workers x 2 CPUs + 1.5 = 9.5 admission CPUs: more than the 8-CPU head, within the head and
    the 2-CPU node together. It is admitted with its reservation split (the entrypoint holds the
    data and driver share, each worker its 2 CPUs in Ray Train's placement group) and runs a
    worker on each node. The node is SIGKILLed mid-run: the head alone cannot hold the workers
    and their data, so the job waits for capacity, saying so, instead of failing; a node joins
    and the job resumes from its checkpoint and ends SUCCEEDED at its max_steps. Last in the
    module: the head and this test's own nodes are the only live nodes (the module's node was
    killed above)."""
    from serving.deploy import remove, replica_pids

    _, root = fresh_node
    with endpoint_restored(stack):
        # the shared endpoint's replica reserves admission CPUs on the head: with it there, the
        # head holds 2 of the 4 workers beside the entrypoint, and the 4 could never be placed
        remove(stack)
        deadline = time.time() + 150
        while replica_pids(stack) and time.time() < deadline:
            time.sleep(2)
        _bigger_than_any_node(stack, blur_dataset, root, tmp_path_factory)


def _bigger_than_any_node(stack, blur_dataset, root, tmp_path_factory) -> None:
    from cluster.admission import RESOURCE, Ticket, capacity
    from jobs.manage import job_summary
    from jobs.training.client import cluster_resources, job_client, submit
    from jobs.training.spec import TrainSpec
    from registry.tracking import TAG_CHECKPOINT, TAG_RESTORED, TAG_WAITING

    def seen() -> tuple[float, float]:  # both dashboard reports that admission reads list the nodes
        return capacity(stack.ray_address, stack.ray_auth_headers()).total, cluster_resources(stack).get("CPU", 0.0)

    deadline = time.time() + 180
    while seen() != (8 + JOIN_CPUS, 8 + JOIN_CPUS) and time.time() < deadline:
        time.sleep(2)
    assert seen() == (8 + JOIN_CPUS, 8 + JOIN_CPUS), seen()
    client, mlflow = job_client(stack), MlflowClient(stack.mlflow_uri)
    steps = 60
    spec = TrainSpec(dataset=blur_dataset, variant="autoencoder", config={"nf": 8}, image_size=32, batch_size=2,
                     lr=1e-3, max_steps=steps, checkpoint_every="4", log_every=1, workers=4, cpus_per_worker=2,
                     stall_timeout_s=600, model_name="test-multinode-big", experiment="integration")
    sub = submit(spec, stack)
    ticket = Ticket.from_metadata(client.get_job_info(sub["job_id"]).metadata)
    assert ticket.resources == {RESOURCE: 1.5} and ticket.worker_resources == {RESOURCE: 2.0}, ticket
    raylet = _raylet(root)
    on_node: list[psutil.Process] = []
    held, deadline = None, time.time() + 600
    while not (on_node and held) and time.time() < deadline:  # a worker on the node, a checkpoint held
        assert str(client.get_job_status(sub["job_id"])).endswith(("RUNNING", "PENDING")), client.get_job_logs(
            sub["job_id"])[-3000:]
        on_node = on_node or _train_workers_under(raylet)
        held = mlflow.get_run(sub["run_id"]).data.tags.get(TAG_CHECKPOINT)
        time.sleep(1)
    assert on_node, "no training worker was placed on the joined node"
    assert "bigger than one node: its 4 workers reserve" in client.get_job_logs(sub["job_id"])
    step = int(mlflow.get_run(sub["run_id"]).data.metrics.get("step", 0))
    assert held and step < steps, f"step {step}, checkpoint {held}: too late to lose the node mid-run"
    os.kill(raylet.pid, signal.SIGKILL)

    deadline = time.time() + 300  # Ray's health checks, Ray Train's restart, then a pending placement
    while TAG_WAITING not in (tags := mlflow.get_run(sub["run_id"]).data.tags) and time.time() < deadline:
        assert str(client.get_job_status(sub["job_id"])).endswith("RUNNING"), client.get_job_logs(
            sub["job_id"])[-3000:]
        time.sleep(2)
    assert tags.get(TAG_WAITING, "").startswith("waiting since "), tags
    info = job_summary(client, stack, sub["job_id"])
    assert info["status"] == "RUNNING" and info["waiting"] == tags[TAG_WAITING], info
    assert "waiting for workers" in info["progress"] and "ETA" not in info["progress"], info["progress"]

    with contextmanager(_joined)(stack, tmp_path_factory, "node4"):  # capacity comes back
        status = wait_job(client, sub["job_id"], timeout=900)
        logs = client.get_job_logs(sub["job_id"])
        assert status == "SUCCEEDED", logs[-4000:]
    run = mlflow.get_run(sub["run_id"])
    assert int(run.data.metrics["steps_run"]) == steps
    assert int(held) <= int(run.data.tags[TAG_RESTORED]) < steps  # resumed from its checkpoint, not step 0
    assert TAG_WAITING not in run.data.tags  # cleared once the workers were placed
