"""Admission of cluster jobs: one helper that every job (training, evaluation, the gate's
evaluation, batch, search) goes through, built on Ray Jobs' own admission.

A job asks Ray for its WHOLE footprint as entrypoint resources, so Ray keeps it PENDING (shown
as QUEUED) until all of it is free, and no worker of it starts before then. The footprint is
counted in an admission resource, `img2img_cpu`, that every node advertises equal to its CPUs
(`ray start --resources`, cluster/stack.py; `rayStartParams.resources` in the KubeRay
manifests): the driver's reservation must not hold real CPUs, or its own workers and data tasks
could not get them. Serve replicas reserve the same resource beside their CPUs, so jobs and
replicas never count on the same CPUs.

A training job bigger than the cluster's largest node (its footprint in admission CPUs is more
than any one node advertises) cannot be reserved on one node, so its reservation is split
(`worker_reservation`): the entrypoint reserves only its data and driver share, and each of its
workers reserves `cpus_per_worker` admission CPUs (and its GPU) beside its real ones in Ray
Train's placement group, which Ray's GCS places, all bundles at once, once the cluster has them
free on some nodes. Ray Train gives every worker the same resources, so a job's workers are
either all in the entrypoint reservation or all in the placement group. Such a job is RUNNING
while its placement group waits; Ray Train waits for it up to the job's --queue-timeout
(`RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`, jobs/training/client.py).

Order: Ray admits waiting jobs first come, first served among jobs of the same footprint; a
smaller job may start ahead of a bigger one that does not fit yet (Ray backfills). A job of a
higher `--priority` goes ahead of queued lower ones: those (which hold nothing yet) are handed
back to Ray behind it under a new Ray id, keeping their ticket (`jobs ls` shows the ticket's
first id) and their place among their own priority.

Ray fails a job that stays PENDING longer than `RAY_JOB_START_TIMEOUT_SECONDS` (set for the
head by `head_env`, to MAX_QUEUE_TIMEOUT_S); a job's own `--queue-timeout` is checked by its
driver when it is admitted and by every client that reads the queue (`cluster/queue_view.py`), which stops
an overdue queued job with the reason.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass

from cluster.capacity import GPU_RESOURCE, RESOURCE, Capacity, capacity, confirmed  # noqa: F401  (re-exported)
from cluster.errors import Img2ImgError

log = logging.getLogger(__name__)

# Ray Data reads and decodes rows in tasks of 1 CPU beside the job's workers (never on the CPUs
# the workers reserved): with none left, the workers start and then wait forever for data.
DATA_CPUS = 1.0
# The driver (planning, Ray Train's controller, registering the model) is busy at the start and
# the end of a job; half a CPU keeps it from being starved by a neighbour's workers.
DRIVER_CPUS = 0.5
PRIORITIES = ("high", "normal", "low")
DEFAULT_QUEUE_TIMEOUT_S = 24 * 3600.0
MAX_QUEUE_TIMEOUT_S = 7 * 24 * 3600.0
META_KEY = "img2img_admission"  # the job's admission record, JSON in its Ray metadata
QUEUE_TIMEOUT_PREFIX = "queue timeout:"


def node_resources(cpus: float, gpus: int = 0) -> dict[str, float]:
    """What a node advertises for admission (`ray start --resources JSON`): as many admission
    CPUs as it has CPUs (GPUs alike)."""
    out = {RESOURCE: float(cpus)}
    if gpus:
        out[GPU_RESOURCE] = float(gpus)
    return out


def head_env() -> dict[str, str]:
    """Environment of `ray start --head`: the Jobs API's pending timeout, Ray's backstop for
    every job's own --queue-timeout (its default of 15 minutes would fail queued jobs)."""
    return {"RAY_JOB_START_TIMEOUT_SECONDS": str(int(MAX_QUEUE_TIMEOUT_S))}


@dataclass(frozen=True)
class Footprint:
    """What a job holds while it runs: `workers` x (`cpus_per_worker` CPUs, `gpus_per_worker`
    GPUs), plus `data_cpus` for its Ray Data pipeline and `driver_cpus` for its driver."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0
    data_cpus: float = DATA_CPUS
    driver_cpus: float = DRIVER_CPUS

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.data_cpus + self.driver_cpus

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def resources(self, split: bool = False) -> dict[str, float]:
        """The entrypoint resources Ray admits the job with: the whole footprint, or with `split`
        only the data and driver share (the workers reserve theirs: `worker_resources`)."""
        if split:
            return {RESOURCE: round(self.data_cpus + self.driver_cpus, 4)}
        out = {RESOURCE: round(self.cpus, 4)}
        if self.gpus:
            out[GPU_RESOURCE] = round(self.gpus, 4)
        return out

    def worker_resources(self) -> dict[str, float]:
        """What one worker reserves in its placement group bundle when the reservation is split:
        its CPUs (and GPUs) in admission resources."""
        out = {RESOURCE: round(self.cpus_per_worker, 4)}
        if self.gpus_per_worker:
            out[GPU_RESOURCE] = round(self.gpus_per_worker, 4)
        return out

    def describe(self) -> str:
        gpu = f" + {self.gpus:g} GPUs" if self.gpus else ""
        return (f"{self.cpus:g} CPUs{gpu} (--workers {self.workers} x {self.cpus_per_worker:g} CPUs, "
                f"{self.data_cpus:g} for reading the data, {self.driver_cpus:g} for the driver)")


@dataclass
class Ticket:
    """A job's admission record, kept in its Ray metadata (`META_KEY`): its footprint, priority,
    queue timeout (seconds), when it was first submitted (epoch seconds) and its first Ray id
    (`ticket`, stable when a higher priority hands it back to Ray behind itself)."""

    footprint: Footprint
    priority: str = "normal"
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    submitted: float = 0.0
    ticket: str = ""
    resources: dict | None = None  # what was reserved through Ray (entrypoint resources)
    # what each worker reserves in Ray Train's placement group (a split reservation); None: none
    worker_resources: dict | None = None

    @property
    def split(self) -> bool:
        """Whether the workers reserve their own share across nodes (see the module doc)."""
        return bool(self.worker_resources)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "footprint": asdict(self.footprint)})

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> Ticket | None:
        raw = (metadata or {}).get(META_KEY)
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(footprint=Footprint(**d.pop("footprint")), **d)
        except (ValueError, TypeError, KeyError):
            return None

    @property
    def rank(self) -> tuple[int, float]:
        """Queue order: priority first, then first submission."""
        return PRIORITIES.index(self.priority) if self.priority in PRIORITIES else 1, self.submitted


def check_options(priority: str, queue_timeout_s: float | None) -> float:
    """-> the queue timeout in seconds. Raises Img2ImgError for an unknown priority or a
    timeout out of (0, MAX_QUEUE_TIMEOUT_S]."""
    if priority not in PRIORITIES:
        raise Img2ImgError(f"--priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    timeout = DEFAULT_QUEUE_TIMEOUT_S if queue_timeout_s is None else float(queue_timeout_s)
    if not 0 < timeout <= MAX_QUEUE_TIMEOUT_S:
        raise Img2ImgError(f"--queue-timeout must be between 1 second and {MAX_QUEUE_TIMEOUT_S / 86400:g} days "
                           f"(the cluster's limit for a waiting job), got {queue_timeout_s:g}s")
    return timeout


def check_fits(fp: Footprint, resources: dict[str, float], where: str, serve_cpus: float = 0.0,
               largest_node: float | None = None, across_nodes: bool = False) -> None:
    """Refuse a job that can never start: its footprint `fp` is more than the cluster at `where`
    has (`resources`: its totals, {"CPU": 8.0, "GPU": 1.0}; {} skips the check), or than a node
    has (`largest_node`, admission CPUs: the reservation is held on one node), or than Serve
    replicas (`serve_cpus`) leave. `across_nodes`: the job may split its reservation over nodes
    (`worker_reservation`: training), so only its data and driver share, and each worker, must
    fit the largest node. Raises Img2ImgError naming the numbers and the fix."""
    if not resources:
        return
    total = resources.get("CPU", 0)
    cpus = fp.workers * fp.cpus_per_worker
    if total < cpus:
        fit = int(total // fp.cpus_per_worker) if fp.cpus_per_worker else 0
        raise Img2ImgError(f"--workers {fp.workers} x --cpus-per-worker {fp.cpus_per_worker:g} = {cpus:g} CPUs, "
                           f"but the cluster at {where} has {total:g}; use --workers {max(fit, 1)} or a smaller "
                           "--cpus-per-worker (fractions allowed), or add nodes")
    left = total - serve_cpus - cpus
    if left < fp.data_cpus + fp.driver_cpus:
        held = f"Serve replicas hold {serve_cpus:g} of its CPUs and " if serve_cpus else ""
        fix = " or free the replicas' CPUs (`img2img serve deploy --num-cpus 1`, `img2img serve rm`)" if serve_cpus else ""
        raise Img2ImgError(f"the cluster at {where} has {total:g} CPUs; {held}--workers {fp.workers} x "
                           f"--cpus-per-worker {fp.cpus_per_worker:g} = {cpus:g} would leave {max(left, 0):g} for "
                           f"reading the data ({fp.data_cpus:g}) and the job's driver ({fp.driver_cpus:g}): the job "
                           f"could never start; use fewer --workers or a smaller --cpus-per-worker{fix}")
    if largest_node is not None and across_nodes:
        if largest_node < fp.cpus_per_worker:
            raise Img2ImgError(f"--cpus-per-worker {fp.cpus_per_worker:g}: a worker runs on one node, but the largest "
                               f"node of the cluster at {where} has {largest_node:g} CPUs; use a smaller "
                               "--cpus-per-worker and more --workers")
        if largest_node < fp.data_cpus + fp.driver_cpus:
            raise Img2ImgError(f"the job's driver and data reading need {fp.data_cpus + fp.driver_cpus:g} CPUs on "
                               f"one node, but the largest node of the cluster at {where} has {largest_node:g}")
    elif largest_node is not None and largest_node < fp.cpus:
        raise Img2ImgError(f"the job needs {fp.describe()} reserved on one node, but the largest node of the cluster "
                           f"at {where} has {largest_node:g}; use fewer --workers or a smaller --cpus-per-worker")
    if fp.gpus and resources.get("GPU", 0) < fp.gpus:
        raise Img2ImgError(f"--gpu asks for {fp.workers} GPU worker(s) but the cluster at {where} "
                           f"has {int(resources.get('GPU', 0))} GPU(s); use --cpu or add GPU nodes")


def worker_reservation(fp: Footprint, cap: Capacity | None) -> dict[str, float]:
    """What each worker of a training job reserves in Ray Train's placement group: {} when the
    footprint `fp` fits the cluster's largest node (`cap`; None: no admission resources), so the
    entrypoint reserves all of it; else `Footprint.worker_resources` (the split of the module
    doc), GPU admission only on a cluster whose nodes advertise it."""
    if cap is None or fp.cpus <= cap.largest:
        return {}
    res = fp.worker_resources()
    if not cap.gpus:
        res.pop(GPU_RESOURCE, None)
    return res


def entrypoint_resources(fp: Footprint, cap: Capacity | None, split: bool = False) -> dict[str, float]:
    """What to reserve through Ray: the footprint in admission resources (with `split`, only
    its data and driver share), or nothing on a cluster whose nodes advertise none (started
    without them: no queue, as before)."""
    if cap is None:
        log.warning("the Ray cluster advertises no %r: jobs are not queued (restart it with `img2img stack up`)",
                    RESOURCE)
        return {}
    res = fp.resources(split)
    if not cap.gpus:
        res.pop(GPU_RESOURCE, None)
    return res


def exec_entrypoint(entrypoint: str) -> str:
    """`exec ENTRYPOINT`: Ray Jobs runs an entrypoint through `/bin/sh -c`, and dash forks the
    command instead of replacing itself with it. Ray's stop (a job stopped while queued is
    stopped the moment Ray admits it) signals the shell and the children it sees a moment after
    starting it, so a driver forked just after that outlived its STOPPED job: it trained while
    Ray had released its reservation to the next job (10 of 44 stopped queued jobs here; none of
    32 with `exec`). With `exec` the driver IS the process Ray signals."""
    return entrypoint if entrypoint.startswith("exec ") else f"exec {entrypoint}"


def new_job_id() -> str:
    """A fresh Ray submission id, `raysubmit_` + 16 hex digits (Ray's own form)."""
    return f"raysubmit_{uuid.uuid4().hex[:16]}"


def ray_submit(client, *, entrypoint: str, runtime_env: dict | None, metadata: dict,
               resources: dict | None, job_id: str | None = None) -> str:
    """Submit one Ray job (`exec_entrypoint`, `resources` as its entrypoint resources) under
    `job_id` or a fresh id. -> the id. Raises what Ray's client raises."""
    job_id = job_id or new_job_id()
    client.submit_job(entrypoint=exec_entrypoint(entrypoint), runtime_env=runtime_env, submission_id=job_id,
                      metadata=metadata, entrypoint_resources=resources)
    return job_id


def submit(client, *, entrypoint: str, runtime_env: dict, metadata: dict, footprint: Footprint,
           priority: str = "normal", queue_timeout_s: float | None = None, cap: Capacity | None = None,
           ticket: Ticket | None = None, worker_resources: dict | None = None) -> str:
    """Submit a job through Ray Jobs with its whole footprint reserved (see the module doc) and
    its admission record in its metadata; a higher-priority job then sends the queued lower ones
    behind it (`requeue_behind`). `worker_resources`: what each worker reserves itself in Ray
    Train's placement group (`worker_reservation`); the entrypoint then reserves only the data
    and driver share. -> the Ray submission id. Raises Img2ImgError if Ray refuses."""
    timeout = check_options(priority, queue_timeout_s)
    ticket = ticket or Ticket(footprint, priority, timeout, time.time())
    job_id = new_job_id()
    ticket.ticket = ticket.ticket or job_id
    ticket.worker_resources = dict(worker_resources) if worker_resources and cap is not None else None
    ticket.resources = entrypoint_resources(footprint, cap, ticket.split) or None
    try:
        ray_submit(client, entrypoint=f"{entrypoint} {deadline_args(ticket)}", runtime_env=runtime_env,
                   metadata={**metadata, META_KEY: ticket.to_json()}, resources=ticket.resources, job_id=job_id)
    except Exception as e:
        raise Img2ImgError(f"Ray refused the job: {str(e).splitlines()[0]}") from None
    if priority != PRIORITIES[-1]:
        requeue_behind(client, ticket)
    return job_id


def job_status(job) -> str:
    """A Ray JobDetails' status as a bare name: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED."""
    return str(job.status).split(".")[-1]


def queued(client, jobs: list | None = None) -> list:
    """Ray's PENDING jobs that carry an admission record, in queue order (priority, then first
    submission): [(JobDetails, Ticket)]. `jobs`: client.list_jobs() when already read."""
    out = [(j, t) for j in (client.list_jobs() if jobs is None else jobs) if job_status(j) == "PENDING"
           and (t := Ticket.from_metadata(j.metadata)) is not None]
    return sorted(out, key=lambda jt: jt[1].rank)


def requeue_behind(client, ticket: Ticket, same_priority: bool = False) -> list[str]:
    """Hand queued jobs of a LOWER priority than `ticket`'s (with `same_priority`, also those of
    its priority first submitted after it) back to Ray behind it: a PENDING job holds nothing (no
    process, no CPU), so it is stopped and submitted again, unchanged, under a new Ray id with
    the same ticket. -> the new ids."""
    moved = []
    for job, t in queued(client):
        behind = t.rank > ticket.rank if same_priority else t.rank[0] > PRIORITIES.index(ticket.priority)
        if not behind or t.ticket == ticket.ticket:
            continue
        try:
            if job_status(client.get_job_info(job.submission_id)) != "PENDING":
                continue
            client.stop_job(job.submission_id)
            moved.append(ray_submit(client, entrypoint=job.entrypoint, runtime_env=job.runtime_env,
                                    metadata={**(job.metadata or {}), "requeued_from": job.submission_id},
                                    resources=t.resources))
        except Exception as e:  # the job keeps its place; the order is then Ray's
            log.warning("could not requeue %s behind a %s-priority job: %s", job.submission_id, ticket.priority, e)
    return moved


def deadline_args(ticket: Ticket) -> str:
    """Arguments a job's entrypoint gets so that its driver can refuse to start past its turn."""
    return f"--queue-deadline {ticket.submitted + ticket.queue_timeout_s:.0f}"


def check_deadline(deadline: float | None, now: float | None = None) -> None:
    """In a driver Ray has just admitted: raise Img2ImgError('queue timeout: ...') when its
    --queue-timeout passed while it waited (it then ends at once, having started nothing)."""
    now = time.time() if now is None else now
    if deadline and now > deadline:
        raise Img2ImgError(f"{QUEUE_TIMEOUT_PREFIX} the job waited in the queue past its --queue-timeout "
                           f"({_age(now - deadline)} late) and was not started; submit it again, or with a longer "
                           "--queue-timeout")


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def current_id(client, job_id: str) -> str:
    """The Ray id a job has now: a higher priority may have handed it back to Ray under a new
    id (`requeued_from`); followers and `jobs stop` go on with that one."""
    seen = {job_id}
    jobs = None
    while True:
        jobs = jobs if jobs is not None else client.list_jobs()
        nxt = next((j.submission_id for j in jobs if (j.metadata or {}).get("requeued_from") == job_id), None)
        if nxt is None or nxt in seen:
            return job_id
        seen.add(nxt)
        job_id = nxt


def replaced(jobs: list) -> set[str]:
    """Ids of jobs handed back to Ray under a new id (`requeue_behind`)."""
    return {r for j in jobs if (r := (j.metadata or {}).get("requeued_from"))}
