"""Many jobs at once: they queue through Ray's own admission and run one after another in order
(priority first), never two at once when only one fits; a queued job can be cancelled; a
high-priority job with --preempt makes room by checkpointing and re-queuing a running one.

The issue's setting is 2-worker jobs on a 4-CPU head (3.5 CPUs each: one at a time). The
`stack` fixture's head has 8 CPUs, so the jobs here take 2 CPUs per worker: 2 x 2 + 1 for the
data + 0.5 for the driver = 5.5 admission CPUs, so that again only one fits at a time (tiny
networks, 4 steps), also beside the Serve replicas an earlier test may have left (up to 2 CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.conftest import register_tiny_autoencoder, wait_job

BIG = ["--variant", "autoencoder", "--set", "nf=8", "--image-size", "64", "--batch-size", "8", "--max-steps", "4",
       "--workers", "2", "--cpus-per-worker", "2", "--experiment", "queue"]


def _submit(dataset: str, name: str, *extra: str) -> subprocess.Popen:
    """`img2img train` in its own process (as a person at another terminal would)."""
    return subprocess.Popen([sys.executable, "-m", "img2img_cli", "train", "--dataset", dataset, "--model-name", name,
                             *BIG, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def _output(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "Uploading package" not in out and "Creating a file package" not in out, out  # Ray's chatter
    return out


def _job_id(proc: subprocess.Popen) -> str:
    return _output(proc).split("Submitted job ", 1)[1].split()[0]


def _steps(settings, run_id: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
    """When (epoch seconds) the run logged each `step` between `since` and `until`."""
    from mlflow.tracking import MlflowClient

    return [t for m in MlflowClient(settings.mlflow_uri).get_metric_history(run_id, "step")
            if since <= (t := m.timestamp / 1000) <= until]


def _span(settings, client, job_id: str, since: float = 0.0) -> tuple[float, float]:
    """(training started, job ended), epoch seconds: the first `step` the job's MLflow run logged
    after `since` (its workers' first step), Ray's end time of the job. Ray 2.60's state API
    keeps no start time for actors, so the start is the run's own record."""
    info = client.get_job_info(job_id)
    steps = _steps(settings, info.metadata["run_id"], since)
    assert steps, f"{job_id} logged no step"
    return min(steps), info.end_time / 1000


def _spans(settings, client, ids) -> dict[str, tuple[float, float]]:
    """`_span` of each job. A copy handed back to Ray behind a higher priority shares its run
    with the job it replaced, which was stopped while queued and so never trained: the run has
    no step from before that job ended, and the copy's span starts after it."""
    spans = {}
    for job in ids:
        info = client.get_job_info(job)
        since = 0.0
        if original := (info.metadata or {}).get("requeued_from"):
            since = client.get_job_info(original).end_time / 1000
            early = _steps(settings, info.metadata["run_id"], until=since)
            assert not early, f"{original} was stopped while queued, yet trained: {client.get_job_logs(original)[-2000:]}"
        spans[job] = _span(settings, client, job, since)
    return spans


def _one_at_a_time(spans: dict[str, tuple[float, float]]) -> list[str]:
    """The ids in the order they trained, asserting that none trained before the previous one
    had ended."""
    order = sorted(spans, key=lambda j: spans[j][0])
    for a, b in zip(order, order[1:]):
        assert spans[b][0] >= spans[a][1] - 1.0, f"two jobs trained at once: {spans}"
    return order


def test_a_job_stopped_while_queued_never_runs_its_driver(stack, tmp_path):
    """Ray stops a queued job the moment it admits it: its driver must never run. Sixteen queued
    jobs whose driver would leave a file behind are stopped while one job holds the CPUs."""
    from cluster.admission import ray_submit
    from jobs.training.client import job_client

    client = job_client(stack)
    hold = ray_submit(client, entrypoint="python -c 'import time; time.sleep(4)'", runtime_env=None, metadata={},
                      resources={"img2img_cpu": 5.5})
    deadline = time.time() + 120
    while str(client.get_job_status(hold)).split(".")[-1] == "PENDING":
        assert time.time() < deadline
        time.sleep(0.5)
    queued = [ray_submit(client, entrypoint=f"python -c \"import time; time.sleep(1); open('{tmp_path}/{n}', 'w')\"",
                         runtime_env=None, metadata={}, resources={"img2img_cpu": 5.5}) for n in range(16)]
    for job in queued:
        client.stop_job(job)
    assert [wait_job(client, job, timeout=300) for job in queued] == ["STOPPED"] * 16
    assert wait_job(client, hold, timeout=60) == "SUCCEEDED"
    time.sleep(3)  # longer than an escaped driver needs to leave its file
    assert not os.listdir(tmp_path)


def test_three_jobs_submitted_at_once_run_one_at_a_time_in_order_a_high_one_goes_next_a_cancelled_one_never_starts(
        stack, blur_dataset, cli):
    from mlflow.tracking import MlflowClient

    from cluster.admission import Ticket, current_id
    from jobs.training.client import job_client
    from registry.tracking import TAG_PHASE, TAG_TRAINING_SINCE

    client = job_client(stack)
    MlflowClient(stack.mlflow_uri).get_experiment_by_name("queue") or MlflowClient(
        stack.mlflow_uri).create_experiment("queue")
    procs = [_submit(blur_dataset, f"queue-{n}") for n in range(1, 4)]  # three people at once
    three = sorted((_job_id(p) for p in procs),  # the queue's order: first submitted first
                  key=lambda j: Ticket.from_metadata(client.get_job_info(j).metadata).submitted)
    high = _job_id(_submit(blur_dataset, "queue-high", "--priority", "high"))  # submitted last
    waiting = [j for j in three if str(client.get_job_status(current_id(client, j))).endswith("PENDING")]
    cancelled = _job_id(_submit(blur_dataset, "queue-cancelled"))
    three = [current_id(client, j) for j in three]  # those queued were handed back to Ray behind the high one

    listed = cli("jobs", "ls")
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    flat = " ".join(listed.output.split())
    assert "QUEUED #1" in flat and "needs 5.5 CPUs" in flat and "queue-high" in flat and "behind raysubmit_" in flat, \
        listed.output
    stopped = cli("jobs", "stop", cancelled)
    assert stopped.exit_code == 0 and "will never start" in stopped.output, stopped.output

    for job in (*three, high):
        assert wait_job(client, job, timeout=900) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert wait_job(client, cancelled, timeout=300) == "STOPPED"
    order = [j for j in _one_at_a_time(_spans(stack, client, (*three, high))) if j in (*three, high)]
    # the one(s) Ray had started, then the high one, then those that waited, first come, first served
    waiting = [current_id(client, j) for j in waiting]
    started = [j for j in order if j != high and j not in waiting]
    assert waiting and order == [*started, high, *waiting], (order, started, high, waiting)
    # Ray ends the cancelled job when its turn comes, before its driver does anything
    run = MlflowClient(stack.mlflow_uri).get_run(client.get_job_info(cancelled).metadata["run_id"])
    assert run.info.status == "KILLED" and "step" not in run.data.metrics, run
    assert TAG_TRAINING_SINCE not in run.data.tags and run.data.tags.get(TAG_PHASE) == "stopped", run.data.tags


def test_an_evaluation_waits_behind_a_training_and_starts_once_stopping_it_freed_its_cpus(stack, blur_dataset, cli):
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.client import evaluate
    from jobs.manage import _live_actors
    from jobs.training.client import job_client

    client, ml = job_client(stack), MlflowClient(stack.mlflow_uri)
    version = register_tiny_autoencoder(stack, "queue-eval", seed=3)
    ml.get_experiment_by_name("queue") or ml.create_experiment("queue")
    training = _job_id(_submit(blur_dataset, "queue-d", "--max-steps", "400"))
    run_id = client.get_job_info(training).metadata["run_id"]
    result: dict = {}
    # 1 Scorer x 2 CPUs + 1.5 beside the training's 5.5: more than 8, so it waits its turn
    scoring = threading.Thread(target=lambda: result.update(
        evaluate(stack, f"queue-eval/{version}", blur_dataset, "val", limit=2, cpus_per_worker=2.0)))
    scoring.start()
    deadline = time.time() + 300
    while ml.get_run(run_id).data.tags.get("img2img.phase") != "training":
        assert time.time() < deadline, client.get_job_logs(training)[-2000:]
        time.sleep(2)
    flat = " ".join(cli("jobs", "ls").output.split())
    assert "eval queue-eval/" in flat and "QUEUED #1" in flat and f"behind {training}" in flat, flat
    # Serve replicas cannot take the CPUs the jobs reserved either
    refused = cli("serve", "deploy", "--model", f"queue-eval/{version}", "--min-replicas", "3", "--max-replicas", "3",
                  "--num-cpus", "3")
    assert refused.exit_code == 1 and "are not reserved by jobs" in " ".join(refused.output.split()), refused.output

    began = time.time()
    r = cli("jobs", "stop", training)
    stopped_s = time.time() - began
    assert r.exit_code == 0 and f"Stopped {training}" in r.output, r.output
    assert stopped_s < 30 and not _live_actors(stack, client.get_job_info(training).job_id), stopped_s
    run = ml.get_run(run_id)
    assert run.info.status == "KILLED" and "error" not in run.data.tags, run.data.tags
    scoring.join(timeout=600)
    assert result.get("images") == 2, result
    assert ml.get_run(result["run_id"]).info.start_time / 1000 >= client.get_job_info(training).end_time / 1000 - 1


def test_a_high_job_with_preempt_checkpoints_a_running_one_which_is_requeued_and_resumes_where_it_stopped(
        stack, blur_dataset, cli):
    from mlflow.tracking import MlflowClient

    from cluster.admission import current_id
    from jobs.training.client import job_client
    from registry.tracking import TAG_PREEMPTED, TAG_RESTORED

    client, ml = job_client(stack), MlflowClient(stack.mlflow_uri)
    ml.get_experiment_by_name("queue") or ml.create_experiment("queue")
    low = _job_id(_submit(blur_dataset, "queue-low", "--max-steps", "300", "--checkpoint-every", "10m"))
    run_id = client.get_job_info(low).metadata["run_id"]
    deadline = time.time() + 300
    while str(client.get_job_status(low)).split(".")[-1] != "RUNNING":
        assert time.time() < deadline, client.get_job_logs(low)[-2000:]
        time.sleep(1)
    follower = subprocess.Popen([sys.executable, "-m", "img2img_cli", "jobs", "status", low, "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while ml.get_run(run_id).data.tags.get("img2img.phase") != "training":
        assert time.time() < deadline, client.get_job_logs(low)[-2000:]
        time.sleep(1)
    # in this process (no start-up of its own): the running job is surely still training when it asks
    out = cli("train", "--dataset", blur_dataset, "--model-name", "queue-urgent", *BIG, "--priority", "high",
              "--preempt").output
    high = out.split("Submitted job ", 1)[1].split()[0]
    assert f"Preempting {low}" in " ".join(out.split()) and "Traceback" not in out, out

    assert wait_job(client, low, timeout=600) == "SUCCEEDED", client.get_job_logs(low)[-3000:]  # it re-queued itself
    copy = current_id(client, low)
    assert copy != low and client.get_job_info(copy).metadata["preempted_by"] == high, client.get_job_logs(low)[-3000:]
    flat = " ".join(cli("jobs", "ls").output.split())
    assert f"{copy} " in flat and f"preempted by {high} at step" in flat and f"{low} " not in flat, flat
    status = cli("jobs", "status", low)  # the old id leads to the copy
    assert status.exit_code == 0 and copy in status.output and f"preempted by {high}, re-queued, resumes at step" \
        in " ".join(status.output.split()), status.output

    for job in (high, copy):
        assert wait_job(client, job, timeout=900) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    follower_out, _ = follower.communicate(timeout=120)
    assert follower.returncode == 0 and "Traceback" not in follower_out, follower_out
    assert f"preempted by {high}, re-queued, resumes at step" in follower_out, follower_out
    low_ended = client.get_job_info(low).end_time / 1000
    spans = {low: _span(stack, client, low), high: _span(stack, client, high), copy: _span(stack, client, copy, low_ended)}
    assert _one_at_a_time(spans) == [low, high, copy], spans

    run = ml.get_run(run_id)
    resumed_at = int(run.data.tags[TAG_RESTORED])
    assert run.info.status == "FINISHED" and resumed_at > 0, run.data.tags
    assert run.data.tags[TAG_PREEMPTED] == f"preempted by {high}, re-queued, resumes at step {resumed_at}"
    assert run.data.metrics["steps_run"] == 300, run.data.metrics
    after = [m.value for m in ml.get_metric_history(run_id, "step") if m.timestamp / 1000 > low_ended]
    assert after and min(after) > resumed_at - 1 and min(after) > 0, after  # it went on, not from step 0


@pytest.mark.parametrize("args, message", [
    (["--priority", "urgent"], "--priority must be one of high, normal, low"),
    (["--queue-timeout", "0"], "--queue-timeout must be between"),
    (["--workers", "2", "--cpus-per-worker", "4"], "could never start"),
])
def test_a_request_that_can_never_be_admitted_is_refused_before_submission(stack, blur_dataset, cli, args, message):
    r = cli("train", "--dataset", blur_dataset, "--variant", "autoencoder", "--max-steps", "2", *args)
    assert r.exit_code == 1 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
