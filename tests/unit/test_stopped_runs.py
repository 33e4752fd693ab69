"""A job stopped by the user ends its MLflow run KILLED, whatever its stop surfaced as inside Tune
or Ray Train (they wrap an exception raised in them in their own), never FAILED."""

import signal

import pytest
from mlflow.tracking import MlflowClient

from cluster.settings import Settings
from jobs.training import stopping


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("stops", artifact_location=str(tmp_path / "artifacts"))
    settings = Settings(state_dir=tmp_path, s3_endpoint="store:9000", mlflow_uri=uri, ray_address="http://ray:8265")
    yield settings, client, client.create_run(exp).info.run_id
    stopping.STOP_REQUESTED.clear()
    stopping.STOP_REQUESTED_AT_MS.clear()


@pytest.mark.parametrize("stopped, status, tag", [
    (False, "FAILED", "error"),
    (True, "KILLED", "stopped"),
])
def test_a_run_ends_killed_once_sigterm_arrived_whatever_error_follows(run, stopped, status, tag):
    settings, client, run_id = run
    previous = signal.getsignal(signal.SIGTERM)
    stopping.on_stop()
    try:
        if stopped:
            with pytest.raises(stopping.JobStopped):
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopping.mark_ended(settings, run_id, "TuneError: The Ray Tune run failed")  # what the stop was wrapped in
    got = client.get_run(run_id)
    assert got.info.status == status
    assert tag in got.data.tags


@pytest.mark.parametrize("stopped, why", [(True, "cut off (the search was stopped)"),
                                          (False, "cut off (the search failed)")])
def test_a_search_ending_early_ends_its_running_trials_killed(run, stopped, why):
    """The trials' actors die with the search's driver and never end their runs themselves."""
    from jobs.search.driver import end_cut_off_trials
    from jobs.search.trials import PARENT_TAG, TAG_OUTCOME

    settings, client, search_id = run
    exp = client.get_run(search_id).info.experiment_id
    running, done = (client.create_run(exp, tags={PARENT_TAG: search_id}).info.run_id for _ in range(2))
    client.set_terminated(done, status="FINISHED")
    other = client.create_run(exp).info.run_id  # not a trial of this search
    if stopped:
        stopping.STOP_REQUESTED.set()
    end_cut_off_trials(settings, search_id)
    assert client.get_run(running).info.status == "KILLED"
    assert client.get_run(running).data.tags[TAG_OUTCOME] == why
    assert client.get_run(done).info.status == "FINISHED" and client.get_run(other).info.status == "RUNNING"


def test_jobs_stop_ends_the_runs_of_a_jobs_trials_too(run):
    """`img2img jobs stop` marks the job's run KILLED once its processes are gone, and its child
    runs still RUNNING (a search's trials), in case the driver could not."""
    from jobs.manage import _mark_killed
    from jobs.search.trials import PARENT_TAG

    settings, client, search_id = run
    exp = client.get_run(search_id).info.experiment_id
    trial = client.create_run(exp, tags={PARENT_TAG: search_id}).info.run_id
    other = client.create_run(exp).info.run_id
    _mark_killed(settings, search_id)
    assert client.get_run(search_id).info.status == "KILLED" and client.get_run(trial).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"


@pytest.mark.parametrize("via", ["driver", "jobs stop"])
def test_a_trial_the_stop_failed_ends_killed_and_one_that_failed_before_stays_failed(run, via):
    """A trial whose training saw the stop as an error ends its own run FAILED, possibly before
    anyone looks: a stop turns the ones that ended FAILED after it was asked for into KILLED
    (`--resume` runs them again) and leaves a trial that had failed on its own FAILED."""
    import time

    from jobs.manage import _mark_killed
    from jobs.search.driver import end_cut_off_trials
    from jobs.search.trials import PARENT_TAG

    settings, client, search_id = run
    exp = client.get_run(search_id).info.experiment_id
    failed_before = client.create_run(exp, tags={PARENT_TAG: search_id}).info.run_id
    client.set_terminated(failed_before, status="FAILED")
    time.sleep(0.01)
    asked = int(time.time() * 1000)
    failed_by_stop = client.create_run(exp, tags={PARENT_TAG: search_id}).info.run_id
    client.set_terminated(failed_by_stop, status="FAILED", end_time=asked + 5)
    if via == "driver":
        stopping.STOP_REQUESTED_AT_MS[:] = [asked]
        stopping.STOP_REQUESTED.set()
        end_cut_off_trials(settings, search_id)
    else:
        _mark_killed(settings, search_id, since_ms=asked)
    assert client.get_run(failed_by_stop).info.status == "KILLED"
    assert client.get_run(failed_before).info.status == "FAILED"
