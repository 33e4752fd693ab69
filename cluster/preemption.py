"""Preemption on Ray Jobs: a job submitted with `--preempt` that does not fit makes room by
asking lower-priority RUNNING jobs to stop at a checkpoint; each such job's driver then hands a
copy of itself back to Ray (a new submission, the same entrypoint, metadata and reserved
footprint) and ends, freeing what it reserved.

Ray admits the waiting jobs as usual: the preempting job was submitted first, so it starts
first; the copy waits behind it, ahead of the queued jobs it was submitted before (they are
handed back to Ray behind it, as `admission.requeue_behind` does for priorities). How a running
job is asked to stop, and how it resumes from its checkpoint, is the job's own business (for
training: an MLflow tag its workers watch, and Ray Train restoring the run's latest checkpoint).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from cluster import admission
from cluster.admission import PRIORITIES, Capacity, Ticket
from cluster.capacity import REPORT_LAG_S, reread_while_short
from cluster.errors import Img2ImgError

log = logging.getLogger(__name__)
PREEMPTIBLE = "preemptible"  # metadata key: "true" on jobs that can stop at a checkpoint and resume


def check_preempt(priority: str, preempt: bool) -> None:
    """Raise Img2ImgError for `--preempt` with the lowest priority (nothing ranks below it)."""
    if preempt and priority == PRIORITIES[-1]:
        raise Img2ImgError(f"--preempt stops running jobs of a LOWER priority: none is below --priority {priority}; "
                           "use --priority high")


def _room(ticket: Ticket, cap: Capacity) -> float:
    """Admission CPUs `ticket` can use: the whole cluster's free ones for a split reservation, else one node's."""
    return cap.free if ticket.split else cap.largest_free


def settled(client, job_id: str, ticket: Ticket, cap: Capacity, reread: Callable[[], Capacity | None],
            lag_s: float = REPORT_LAG_S) -> Capacity | None:
    """The capacity to choose victims by for Ray job `job_id`, just submitted with `ticket`,
    which did not fit by `cap` (read before it was submitted).

    The dashboard's report trails the cluster: it still counts a job's reservation for a few
    seconds after that job has ended (`cluster.capacity.REPORT_LAG_S`). While a job has ended
    within `lag_s` seconds (the Jobs API's end times), `cap` may count CPUs nobody holds, so
    the report is read again (`reread`, every 0.5 s) until it cannot. Reading after the
    submission is safe: a job that is still PENDING holds no reservation of its own.
    -> None when `job_id` fits after all (Ray admitted it, or a read shows the room, which Ray
    then admits it to): nobody needs to stop; else the last read (None when the cluster
    stopped advertising admission resources). Waits at most `lag_s` s (plus one read). Raises
    Img2ImgError when `reread` does (`cluster.capacity.capacity`: the dashboard unreadable)."""
    last_end = max(((j.end_time or 0) / 1000 for j in client.list_jobs()), default=0.0) if lag_s > 0 else 0.0
    stale_for = last_end + lag_s - time.time()

    def look(c: Capacity | None):
        if admission.job_status(client.get_job_info(job_id)) != "PENDING" or c is None \
                or _room(ticket, c) >= ticket.footprint.cpus:
            return None
        return c

    first = look(cap)
    if first is None or stale_for <= 0:
        return first
    # `look` maps "fits" to None, which ends the re-reading; any other read is still short
    return reread_while_short(lambda: look(reread()), lambda c: True, stale_for)


def victims(client, ticket: Ticket, cap: Capacity | None, asked=frozenset()) -> list:
    """The RUNNING preemptible jobs of a lower priority than `ticket` to stop so that its
    footprint fits: lowest priority first, then the most recently started (the least work to
    redo), as few as make room on one node (for a job whose reservation is split over nodes,
    `Ticket.split`: in the whole cluster). [] when it fits already, when the cluster advertises
    no admission resources, or when stopping all of them would still not make room (stopping
    some would then only cost work). `asked`: jobs already asked to stop (skipped).
    -> [(JobDetails, Ticket)]"""
    if cap is None:
        return []
    needs, free = ticket.footprint.cpus, _room(ticket, cap)
    if free >= needs:
        return []
    rank = PRIORITIES.index(ticket.priority)
    running = [(j, t) for j in client.list_jobs() if admission.job_status(j) == "RUNNING"
               and (j.metadata or {}).get(PREEMPTIBLE) == "true" and j.submission_id not in asked
               and (t := Ticket.from_metadata(j.metadata)) is not None and t.rank[0] > rank]
    running.sort(key=lambda jt: (-jt[1].rank[0], -(jt[0].start_time or 0)))
    out = []
    for job, t in running:
        out.append((job, t))
        free += t.footprint.cpus
        if free >= needs:
            return out
    return []


def own_job(client, ray_job_id: str):
    """The JobDetails of the submission whose driver runs as Ray job `ray_job_id` (hex, from
    `ray.get_runtime_context().get_job_id()`); None when it is not a submitted job."""
    return next((j for j in client.list_jobs() if j.job_id == ray_job_id), None)


def requeue_copy(client, job, metadata: dict) -> str:
    """Hand a copy of the running `job` (JobDetails) back to Ray: the same entrypoint (with a
    queue deadline counted from now), runtime env, admission ticket and reserved footprint, and
    its metadata plus `metadata` and `requeued_from` (so followers, `jobs stop` and `jobs ls` go
    on with the copy). Queued jobs of a worse rank (lower priority, or the same priority and
    submitted after it) are handed back to Ray behind the copy. -> the copy's Ray id.
    Raises Img2ImgError if Ray refuses it."""
    ticket = Ticket.from_metadata(job.metadata)
    entrypoint = job.entrypoint
    if ticket is not None:
        entrypoint = re.sub(r"\s*--queue-deadline \S+", "", entrypoint)
        entrypoint += f" --queue-deadline {time.time() + ticket.queue_timeout_s:.0f}"
    try:
        new_id = admission.ray_submit(client, entrypoint=entrypoint, runtime_env=job.runtime_env,
                                      metadata={**(job.metadata or {}), **metadata, "requeued_from": job.submission_id},
                                      resources=ticket.resources if ticket else None)
    except Exception as e:
        raise Img2ImgError(f"Ray refused the preempted job's copy: {str(e).splitlines()[0]}") from None
    if ticket is not None:
        admission.requeue_behind(client, ticket, same_priority=True)
    return new_id
