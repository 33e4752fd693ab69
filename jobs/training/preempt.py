"""Preempting training jobs (`img2img train --priority high --preempt`), on Ray Jobs and MLflow.

The submitter asks each lower-priority training job it needs room from (chosen by
`cluster.preemption.victims`) to stop: it sets the tag TAG_PREEMPT_REQUEST on the job's MLflow
run. The job's rank-0 worker reads that tag every PREEMPT_POLL_S seconds; at the next step every
worker validates and reports a checkpoint, as at the end of a run, and the loop ends. The driver
then hands a copy of its Ray job back to the queue (`requeue_self`) and exits, freeing its
reservation. The copy runs the same spec with the same MLflow run: Ray Train finds the run's
checkpoints under its name in the store and restores the latest, so the step count (and the
run's metrics) go on from there.
"""

from __future__ import annotations

import logging
import os

import ray
from mlflow.tracking import MlflowClient
from ray.job_submission import JobSubmissionClient

from cluster.admission import Capacity, Ticket, capacity
from cluster.capacity import REPORT_READ_S
from cluster.errors import Img2ImgError
from cluster.preemption import own_job, requeue_copy, settled, victims
from cluster.settings import Settings
from registry.tracking import TAG_PHASE, TAG_PREEMPT_REQUEST, TAG_PREEMPTED

log = logging.getLogger(__name__)
PREEMPT_POLL_S = 2.0  # how often a running job's rank 0 looks for a request to stop


def preempt_for(settings: Settings, client, job_id: str, cap: Capacity | None) -> list[str]:
    """Ask the training jobs that Ray job `job_id` (just submitted, with --preempt) needs room
    from to stop at a checkpoint and re-queue. -> their Ray ids ([] when it fits, or when
    stopping every lower-priority training job would still not make room)."""
    ticket = Ticket.from_metadata(client.get_job_info(job_id).metadata)
    if ticket is None or not ticket.resources:  # reserved nothing (no admission resources): nothing to wait for
        return []
    if cap is None:  # the dashboard did not answer at submission (a busy head): ask once more
        cap = capacity(settings.ray_address, settings.ray_auth_headers())
    if cap is not None:  # not a job that has just ended, still counted in the report
        cap = settled(client, job_id, ticket, cap,
                      lambda: capacity(settings.ray_address, settings.ray_auth_headers(), REPORT_READ_S))
        if cap is None:
            return []
    ml = MlflowClient(settings.mlflow_uri)
    asked = set()
    for job in client.list_jobs():  # already asked by another preempting job: its room is on its way
        run_id = (job.metadata or {}).get("run_id")
        if str(job.status).endswith("RUNNING") and run_id and TAG_PREEMPT_REQUEST in _tags(ml, run_id):
            asked.add(job.submission_id)
    out = []
    for job, _ in victims(client, ticket, cap, frozenset(asked)):
        run_id = (job.metadata or {}).get("run_id")
        if not run_id:
            continue
        ml.set_tag(run_id, TAG_PREEMPT_REQUEST, job_id)
        log.info("asked %s (run %s) to checkpoint and re-queue behind %s", job.submission_id, run_id, job_id)
        out.append(job.submission_id)
    return out


def _tags(ml, run_id: str) -> dict:
    try:
        return ml.get_run(run_id).data.tags
    except Exception:
        return {}


def requested(ml, run_id: str) -> str | None:
    """The Ray id of the job that asked run `run_id` to stop at a checkpoint, if one did."""
    return _tags(ml, run_id).get(TAG_PREEMPT_REQUEST)


def requeue_self(settings: Settings, run_id: str, step: int) -> str:
    """In a driver whose workers stopped at a checkpoint (step `step`) because a job asked them
    to: hand a copy of this Ray job back to the queue, clear the request, and say so on the run.
    -> the line `preempted by ID, re-queued, resumes at step N`. Raises Img2ImgError if Ray
    refuses the copy."""
    ml = MlflowClient(settings.mlflow_uri)
    by = requested(ml, run_id) or "another job"
    client = JobSubmissionClient(os.environ.get("RAY_API_SERVER_ADDRESS") or settings.ray_address)
    job = own_job(client, ray.get_runtime_context().get_job_id())
    if job is None:
        raise Img2ImgError("preempted, but this driver's Ray job was not found to re-queue it")
    ml.delete_tag(run_id, TAG_PREEMPT_REQUEST)  # first: the copy must not stop again at once
    copy = requeue_copy(client, job, {"preempted_by": by, "resume_step": str(step)})
    line = f"preempted by {by}, re-queued, resumes at step {step}"
    ml.set_tag(run_id, TAG_PREEMPTED, line)
    ml.set_tag(run_id, TAG_PHASE, "preempted")
    log.info("%s (as %s)", line, copy)
    return f"{line} (as {copy})"
