"""Hyper-parameter search on the real stack: an ASHA search over lr whose trials are real training
runs, a deliberately bad lr stopped early, every trial an MLflow child run, the best registered."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import wait_job

# A learning rate 100x too high: its val PSNR falls below its start within 6 steps. (1e-7 does
# not separate here: this tiny autoencoder's val PSNR moved by under 0.1 dB in 24 steps at 3e-3
# as at 1e-7, measured on the blur fixture.)
BAD_LR = 0.3
STEPS = 24


@pytest.fixture(scope="module")
def search_job(stack, blur_dataset):
    """A 3-trial ASHA search (grid over lr, one trial at a time so the bad one meets the others'
    results at its first rung) of a tiny autoencoder on 64 px crops. -> {"job_id", "search_id",
    "status", "logs"}."""
    from cluster.settings import get_settings
    from jobs.search.client import submit
    from jobs.search.spec import SearchSpec
    from jobs.training.client import job_client

    settings = get_settings()
    base = dict(dataset=blur_dataset, variant="autoencoder", config={"nf": 16}, workers=1, cpus_per_worker=0.5,
                image_size=64, batch_size=8, max_steps=STEPS, checkpoint_every="6", experiment="integration-tune",
                model_name="test-tune")
    search = SearchSpec(base=base, space=[f"lr=grid(3e-3,1e-3,{BAD_LR})"], trials=1, scheduler="asha",
                        max_concurrent=1, grace_steps=6, reduction_factor=2, promote=True)
    out = submit(search, settings)
    client = job_client(settings)
    status = wait_job(client, out["job_id"], timeout=1200)
    return {**out, "status": status, "logs": client.get_job_logs(out["job_id"])}


def _children(settings, search_id):
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(settings.mlflow_uri)
    exp = ml.get_run(search_id).info.experiment_id
    return ml.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{search_id}'")


def test_search_stops_the_bad_lr_early_and_registers_the_best(stack, search_job):
    from mlflow.tracking import MlflowClient

    assert search_job["status"] == "SUCCEEDED", search_job["logs"][-4000:]
    ml = MlflowClient(stack.mlflow_uri)
    children = _children(stack, search_job["search_id"])
    assert len(children) == 3  # every trial is a child run of the search
    by_lr = {float(r.data.params["cfg.lr"]): r for r in children}
    assert set(by_lr) == {3e-3, 1e-3, BAD_LR}
    bad = by_lr[BAD_LR]
    table = ml.get_run(search_job["search_id"]).data.tags.get("search_trials")
    assert bad.data.tags["search_outcome"] == "stopped early", (table, search_job["logs"][-3000:])
    assert bad.info.status == "KILLED"
    assert bad.data.metrics["step"] < STEPS  # it never reached the end
    finished = [r for r in children if r.data.tags["search_outcome"] == "finished"]
    assert finished and all(r.data.metrics["step"] == STEPS for r in finished)

    parent = ml.get_run(search_job["search_id"])
    assert parent.info.status == "FINISHED"
    version = ml.get_model_version("test-tune", parent.data.tags["registered_version"])
    assert version.tags["search_run_id"] == search_job["search_id"]
    best = ml.get_run(version.run_id)
    assert best.data.tags["mlflow.parentRunId"] == search_job["search_id"]
    assert float(best.data.params["cfg.lr"]) != BAD_LR
    # the registered version's val PSNR is its trial's best report
    best_psnr = max(m.value for m in ml.get_metric_history(best.info.run_id, "val_psnr"))
    assert float(version.tags["val_psnr"]) == pytest.approx(best_psnr, abs=1e-3)
    assert best_psnr == pytest.approx(parent.data.metrics["best_val_psnr"], abs=1e-6)
    # --promote: the version went through the gate, which refuses a model worse than its input
    # (24 steps of a tiny autoencoder are far below the blurred input's PSNR)
    assert parent.data.tags["promotion"].startswith("the gate refused test-tune v")
    assert "worse than its input" in parent.data.tags["promotion"]
    # The best trial is the best of all trials' counted reports. A stopped trial may log a report
    # past its counted step (Tune's stop reaches its training a cadence later): not ranked.
    for child in children:
        counted = int(child.data.tags["search_counted_step"])
        assert counted == child.data.metrics["step"] if child.data.tags["search_outcome"] == "finished" else counted < STEPS
        history = ml.get_metric_history(child.info.run_id, "val_psnr")
        assert max(m.value for m in history if m.step <= counted) <= best_psnr + 1e-9, (table, child.data.tags)


def test_search_job_is_listed_and_summarised(stack, search_job, cli):
    result = cli("jobs", "ls")
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if search_job["job_id"] in ln)
    assert "SUCCEEDED" in line and "search" in line
    result = cli("jobs", "status", search_job["job_id"])
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output


@pytest.mark.parametrize("args, message", [
    (["--search", "width=choice(16,32)"], "autoencoder has no setting 'width'"),
    (["--search", "nf=choice(16,-1)"], "nf=-1 is refused"),
    (["--search", "lr=loguniform(1e-3,1e-3)"], "empty range"),
])
def test_tune_refuses_a_bad_space_before_submitting(stack, blur_dataset, cli, args, message):
    result = cli("tune", "--dataset", blur_dataset, "--variant", "autoencoder", *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_a_stopped_search_resumes_without_rerunning_finished_trials(stack, blur_dataset):
    """The search's driver is stopped once its first trial has finished; `--resume` continues it
    with Tune's restore: the finished trial is not run again, the search ends registered."""
    from mlflow.tracking import MlflowClient

    from cluster.errors import Img2ImgError
    from cluster.services import poll_until
    from jobs.manage import stop
    from jobs.search.client import submit
    from jobs.search.spec import SearchSpec
    from jobs.training.client import job_client

    settings, ml = stack, MlflowClient(stack.mlflow_uri)
    client = job_client(settings)
    base = dict(dataset=blur_dataset, variant="autoencoder", config={"nf": 16}, workers=1, cpus_per_worker=0.5,
                image_size=64, batch_size=8, max_steps=12, checkpoint_every="6", experiment="integration-tune",
                model_name="test-tune-resume")
    out = submit(SearchSpec(base=base, space=["lr=grid(3e-3,1e-3)"], trials=1, scheduler="fifo"), settings)
    search_id = out["search_id"]

    def first_finished():
        return any(r.info.status == "FINISHED" for r in _children(settings, search_id))

    assert poll_until(first_finished, 900, interval_s=3), client.get_job_logs(out["job_id"])[-3000:]
    time.sleep(15)  # Tune saves the search's state every 5 s (jobs.search.driver.STATE_SAVE_S)
    assert stop(client, settings, out["job_id"]) == "stopped"
    assert ml.get_run(search_id).info.status == "KILLED"
    cut_off = _children(settings, search_id)
    finished = {r.data.tags["search_trial"] for r in cut_off if r.info.status == "FINISHED"}
    # the trial cut off mid-way does not stay RUNNING: it ends KILLED with the search
    assert {r.info.status for r in cut_off} <= {"FINISHED", "KILLED"}, [(r.info.run_id, r.info.status) for r in cut_off]

    again = submit(SearchSpec(base={}, space=[], resume=search_id), settings)
    assert again["search_id"] == search_id
    status = wait_job(client, again["job_id"], timeout=900)
    assert status == "SUCCEEDED", client.get_job_logs(again["job_id"])[-4000:]
    children = _children(settings, search_id)
    for trial in finished:  # not run again
        assert sum(r.data.tags["search_trial"] == trial for r in children) == 1
    assert {float(r.data.params["cfg.lr"]) for r in children} == {3e-3, 1e-3}
    parent = ml.get_run(search_id)
    assert parent.info.status == "FINISHED" and parent.data.tags.get("registered_version")
    assert all(r.info.status != "RUNNING" for r in children)
    with pytest.raises(Img2ImgError, match="has finished; nothing to resume"):
        submit(SearchSpec(base={}, space=[], resume=search_id), settings)


def test_pbt_clones_a_trial_from_the_other_trials_checkpoint(stack, blur_dataset):
    """A 2-trial PBT search (both at once, a perturbation every 6 steps): the trial behind is
    stopped and continues from the other's latest checkpoint, in a new child run tagged with
    the trial it was cloned from, training on from that checkpoint's step (not from step 1);
    its earlier run ends KILLED; the search ends with the best registered and a plot."""
    from mlflow.tracking import MlflowClient

    from jobs.search.client import submit
    from jobs.search.spec import SearchSpec
    from jobs.training.client import job_client

    settings, ml = stack, MlflowClient(stack.mlflow_uri)
    client = job_client(settings)
    base = dict(dataset=blur_dataset, variant="autoencoder", config={"nf": 16}, workers=1, cpus_per_worker=0.5,
                image_size=64, batch_size=8, max_steps=STEPS, checkpoint_every="6", experiment="integration-tune",
                model_name="test-tune-pbt")
    out = submit(SearchSpec(base=base, space=[f"lr=grid(3e-3,{BAD_LR})"], trials=1, scheduler="pbt", max_concurrent=2,
                            perturbation_interval=6), settings)
    status = wait_job(client, out["job_id"], timeout=1500)
    logs = client.get_job_logs(out["job_id"])
    assert status == "SUCCEEDED", logs[-4000:]
    children = _children(settings, out["search_id"])
    trials = {r.data.tags["search_trial"] for r in children}
    assert len(trials) == 2
    clones = [r for r in children if r.data.tags.get("search_cloned_from")]
    assert clones, (logs[-3000:], [(r.data.tags, r.info.status) for r in children])
    for clone in clones:
        donor = clone.data.tags["search_cloned_from"]
        assert donor in trials and donor != clone.data.tags["search_trial"]
        donor_runs = {r.info.run_id for r in children if r.data.tags["search_trial"] == donor}
        checkpoint_run = clone.data.tags["resumed_from_checkpoint"].split("/")[2]
        assert checkpoint_run in donor_runs  # a real checkpoint of the donor trial's training run
        start = int(clone.data.tags["search_start_step"])
        steps = [m.step for m in ml.get_metric_history(clone.info.run_id, "train_loss")]
        assert start >= 6 and steps and min(steps) > start, (start, steps)  # trained on from there
    replaced = [r for r in children if r.data.tags.get("search_outcome", "").startswith("perturbed")]
    assert replaced and all(r.info.status == "KILLED" for r in replaced)
    assert all(r.info.status != "RUNNING" for r in children)
    parent = ml.get_run(out["search_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags.get("registered_version")
    assert parent.data.params["scheduler"] == "pbt"
    artifacts = {a.path for a in ml.list_artifacts(out["search_id"])}
    assert {"trials.json", "trials.png"} <= artifacts

