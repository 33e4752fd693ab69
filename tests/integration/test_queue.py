"""Many jobs at once: they queue through Ray's own admission and run one after another in order
(priority first), never two at once when only one fits, and a queued job can be cancelled.

Jobs here are sized so that only one fits the `stack` fixture's 8 CPUs at a time: 2 workers x 2
CPUs + 1 for the data + 0.5 for the driver = 5.5 admission CPUs (tiny networks, 4 steps), which
still fits beside the Serve replicas an earlier test may have left (up to 2 CPUs)."""

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


def _job_id(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "Uploading package" not in out and "Creating a file package" not in out, out  # Ray's chatter
    return out.split("Submitted job ", 1)[1].split()[0]


def _span(settings, client, job_id: str) -> tuple[float, float]:
    """(training started, job ended), epoch seconds: the run's own start mark, Ray's end time."""
    from mlflow.tracking import MlflowClient

    from registry.tracking import TAG_TRAINING_SINCE

    info = client.get_job_info(job_id)
    run = MlflowClient(settings.mlflow_uri).get_run(info.metadata["run_id"])
    return float(run.data.tags[TAG_TRAINING_SINCE]), info.end_time / 1000


def test_jobs_submitted_together_queue_in_order_priority_goes_first_and_a_cancelled_one_never_starts(
        stack, blur_dataset, cli):
    from mlflow.tracking import MlflowClient

    from cluster.admission import current_id
    from jobs.training.client import job_client

    client = job_client(stack)
    MlflowClient(stack.mlflow_uri).get_experiment_by_name("queue") or MlflowClient(
        stack.mlflow_uri).create_experiment("queue")
    first = _job_id(_submit(blur_dataset, "queue-a"))
    # two more from two processes at once, then a high-priority one, submitted last
    procs = [_submit(blur_dataset, f"queue-{n}") for n in ("b", "c")]
    b, c = sorted((_job_id(p) for p in procs), key=lambda j: client.get_job_info(j).start_time)
    high = _job_id(_submit(blur_dataset, "queue-high", "--priority", "high"))
    b = current_id(client, b)  # handed back to Ray behind the high one
    c = current_id(client, c)

    listed = cli("jobs", "ls")
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    flat = " ".join(listed.output.split())
    assert "QUEUED #1" in flat and "needs 5.5 CPUs" in flat and "queue-high" in flat, listed.output
    assert f"behind {first}" in flat, listed.output

    stopped = cli("jobs", "stop", c)
    assert stopped.exit_code == 0 and "will never start" in stopped.output, stopped.output

    for job in (first, high, b):
        assert wait_job(client, job, timeout=600) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert wait_job(client, c, timeout=120) == "STOPPED"
    spans = [_span(stack, client, j) for j in (first, high, b)]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 1.0, f"two trainings at once: {spans}"  # and high started before b
    run_c = MlflowClient(stack.mlflow_uri).get_run(client.get_job_info(c).metadata["run_id"])
    assert run_c.info.status == "KILLED" and "step" not in run_c.data.metrics, run_c


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
    assert stopped_s < 60 and not _live_actors(stack, client.get_job_info(training).job_id), stopped_s
    run = ml.get_run(run_id)
    assert run.info.status == "KILLED" and "error" not in run.data.tags, run.data.tags
    scoring.join(timeout=600)
    assert result.get("images") == 2, result
    assert ml.get_run(result["run_id"]).info.start_time / 1000 >= client.get_job_info(training).end_time / 1000 - 1


@pytest.mark.parametrize("args, message", [
    (["--priority", "urgent"], "--priority must be one of high, normal, low"),
    (["--queue-timeout", "0"], "--queue-timeout must be between"),
    (["--workers", "2", "--cpus-per-worker", "4"], "could never start"),
])
def test_a_request_that_can_never_be_admitted_is_refused_before_submission(stack, blur_dataset, cli, args, message):
    r = cli("train", "--dataset", blur_dataset, "--variant", "autoencoder", "--max-steps", "2", *args)
    assert r.exit_code == 1 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
