"""How a job's driver ends when it is stopped (`img2img jobs stop`: the Jobs API sends SIGTERM,
then SIGKILL): SIGTERM raises JobStopped in the driver's main thread, and its MLflow run ends
KILLED, not FAILED, whatever the stop surfaced as. Shared by the training and search drivers."""

from __future__ import annotations

import logging
import signal
import threading
import time

from mlflow.tracking import MlflowClient

from cluster.settings import Settings
from registry.tracking import TAG_PHASE

log = logging.getLogger("img2img.train")

# Set once this driver has started work (phase "starting"): a SIGTERM before that is Ray ending
# a job stopped while it was queued, whose run `jobs stop` has already marked (or whose run
# belongs to its copy handed back to Ray behind a higher priority): leave the run alone then.
STARTED = threading.Event()
# Set on SIGTERM: whatever the JobStopped raised then turns into on its way out (Tune and Ray Train
# wrap an exception raised inside them in their own), the job was stopped, not failed.
STOP_REQUESTED = threading.Event()
STOP_REQUESTED_AT_MS: list[int] = []  # when SIGTERM came (ms since the epoch, MLflow's clock)


def _stopped(signum, frame):  # `img2img jobs stop`: the Jobs API sends SIGTERM first
    STOP_REQUESTED_AT_MS[:] = [int(time.time() * 1000)]
    STOP_REQUESTED.set()
    raise JobStopped()


def check_not_cancelled(settings: Settings, run_id: str | None) -> None:
    """A job stopped while it was queued has its run KILLED already: end before doing anything."""
    if not run_id:
        return
    try:
        killed = MlflowClient(settings.mlflow_uri).get_run(run_id).info.status == "KILLED"
    except Exception:
        return
    if killed:
        raise JobStopped()


def on_stop() -> None:
    signal.signal(signal.SIGTERM, _stopped)


class JobStopped(BaseException):
    """SIGTERM from the Jobs API (a BaseException, so generic `except Exception` lets it through)."""


def mark_ended(settings: Settings, run_id: str | None, reason: str, status: str = "FAILED") -> None:
    """End the MLflow run FAILED (with the error as a tag) or KILLED (stopped). After the job
    received SIGTERM the run ends KILLED whatever error the stop surfaced as."""
    if not run_id:
        return
    if STOP_REQUESTED.is_set():
        reason, status = "stopped by the user", "KILLED"
    try:
        client = MlflowClient(settings.mlflow_uri)
        client.set_tag(run_id, "error" if status == "FAILED" else "stopped", reason[:500])
        client.set_tag(run_id, TAG_PHASE, "failed" if status == "FAILED" else "stopped")
        client.set_terminated(run_id, status=status)
    except Exception:  # the job's own error matters more than this bookkeeping
        log.exception("could not mark MLflow run %s %s", run_id, status)




def end_cut_off_children(client: MlflowClient, parent_run_id: str, since_ms: int | None, tags: dict) -> int:
    """End KILLED, with `tags` (e.g. {"stopped": why}), every child run of `parent_run_id` (a search's
    trials) that a stop cut off: still RUNNING (its process died with the job's), or ended
    FAILED at or after `since_ms` (ms since the epoch; the stop reached its training mid-step
    as an error before anyone looked). -> how many were ended. Raises MlflowException."""
    parent = client.get_run(parent_run_id)
    flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    ended = 0
    for child in client.search_runs([parent.info.experiment_id], filter_string=flt, max_results=1000):
        info = child.info
        failed_by_stop = (info.status == "FAILED" and since_ms is not None and (info.end_time or 0) >= since_ms)
        if info.status == "RUNNING" or failed_by_stop:
            for key, value in tags.items():
                client.set_tag(info.run_id, key, value)
            client.set_terminated(info.run_id, status="KILLED")
            ended += 1
    return ended
