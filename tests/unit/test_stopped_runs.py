"""A job stopped by the user ends its MLflow run KILLED, whatever its stop surfaced as inside Tune
or Ray Train (they wrap an exception raised in them in their own), never FAILED."""

import signal

import pytest
from mlflow.tracking import MlflowClient

from cluster.settings import Settings
from jobs.training import driver


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("stops", artifact_location=str(tmp_path / "artifacts"))
    settings = Settings(state_dir=tmp_path, s3_endpoint="store:9000", mlflow_uri=uri, ray_address="http://ray:8265")
    yield settings, client, client.create_run(exp).info.run_id
    driver.STOP_REQUESTED.clear()


@pytest.mark.parametrize("stopped, status, tag", [
    (False, "FAILED", "error"),
    (True, "KILLED", "stopped"),
])
def test_a_run_ends_killed_once_sigterm_arrived_whatever_error_follows(run, stopped, status, tag):
    settings, client, run_id = run
    previous = signal.getsignal(signal.SIGTERM)
    driver._on_stop()
    try:
        if stopped:
            with pytest.raises(driver.JobStopped):
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    driver._mark_ended(settings, run_id, "TuneError: The Ray Tune run failed")  # what the stop was wrapped in
    got = client.get_run(run_id)
    assert got.info.status == status
    assert tag in got.data.tags
