"""The job queue as users see it (`jobs ls`, `train --follow`): each queued job's place, what it
waits for and for how long, read from Ray's PENDING jobs and their admission tickets
(cluster/admission.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cluster.admission import Capacity, Ticket, job_status, queued, replaced


@dataclass
class QueueEntry:
    """One queued job as `jobs ls` shows it: position (1 = next), what it waits for, for how long."""

    job_id: str
    ticket: str
    position: int
    priority: str
    waited_s: float
    needs: float
    free: float
    behind: str | None

    def waiting_for(self) -> str:
        behind = f"; behind {self.behind}" if self.behind else ""
        return f"needs {self.needs:g} CPUs, {self.free:g} free{behind}"


def queue_view(client, cap: Capacity | None, now: float | None = None, cancelled=frozenset()) -> list[QueueEntry]:
    """The queue in order, with each job's position and what it waits for. Jobs in `cancelled`
    (stopped while queued: Ray ends them when their turn comes) are left out."""
    now = time.time() if now is None else now
    out: list[QueueEntry] = []
    jobs = client.list_jobs()
    running = sorted((j for j in jobs if job_status(j) == "RUNNING" and Ticket.from_metadata(j.metadata)),
                     key=lambda j: j.start_time or 0)
    ahead = running[0].submission_id if running else None
    skip = set(cancelled) | replaced(jobs)
    for job, t in queued(client, jobs):
        if job.submission_id in skip:
            continue
        needs = t.footprint.cpus
        # a split reservation (admission.worker_reservation) takes CPUs on several nodes: count them all
        free = (cap.free if t.split else cap.largest_free) if cap else 0.0
        out.append(QueueEntry(job.submission_id, t.ticket or job.submission_id, len(out) + 1, t.priority,
                              now - (t.submitted or now), needs, max(free, 0.0), ahead))
        ahead = job.submission_id
    return out
