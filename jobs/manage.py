"""Following and managing submitted cluster jobs (`jobs ls | status | logs | stop`, `--follow`):
their status, live progress and place in the admission queue, and stopping them so that their
CPUs are free and their MLflow run ends KILLED."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

import httpx
from mlflow.tracking import MlflowClient

from cluster import admission
from cluster.admission import capacity
from cluster.errors import Img2ImgError
from cluster.queue_view import QueueEntry, queue_view
from cluster.services import poll_until
from cluster.settings import Settings
from jobs.driver_lost import end_run, lost_driver, lost_line
from jobs.training.progress import follow, read, strip_ansi, write_raw
from jobs.training.stopping import end_cut_off_children
from registry.tracking import TAG_PHASE

log = logging.getLogger(__name__)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id)).split(".")[-1]


def wait(client, job_id: str, follow: bool, echo=None) -> str:
    """Wait for a job to end; follow=True streams its raw logs meanwhile (colour codes removed
    when not on a terminal). -> the terminal status."""
    echo = echo or write_raw

    async def _tail(jid: str):
        async for chunk in client.tail_job_logs(jid):
            echo(chunk)

    while True:
        if follow:
            asyncio.run(_tail(job_id))
        while (status := _status(client, job_id)) not in TERMINAL:
            time.sleep(1)
        nxt = admission.current_id(client, job_id)
        if nxt == job_id:
            return status
        job_id = nxt  # handed back to Ray (behind a higher priority, or preempted): go on with its new id


def outcome_error(job_id: str, status: str, message: str = "", logs_hint: bool = True) -> Img2ImgError | None:
    """None when a followed job SUCCEEDED, else the one-line error the CLI exits 1 with:
    `job ID FAILED: <the message's last line>; see `img2img jobs logs ID`` (STOPPED alike)."""
    if status == "SUCCEEDED":
        return None
    reason = f": {message.strip().splitlines()[-1][:300]}" if message and message.strip() else ""
    hint = f"; see `img2img jobs logs {job_id}`" if logs_hint else ""
    return Img2ImgError(f"job {job_id} {status}{reason}{hint}")


def follow_progress(client, settings: Settings, job_id: str, run_id: str, say=None, live: bool | None = None):
    """The live progress display of a job until it ends (see jobs.training.progress); while it waits in
    the queue, its place and what it waits for. -> last Snapshot."""
    current = [job_id]

    def job_status() -> tuple[str, str]:
        info = client.get_job_info(current[0])
        status = str(info.status).split(".")[-1]
        if status in ("STOPPED", "SUCCEEDED"):  # handed back to Ray (priority, preempted): go on with its copy
            nxt = admission.current_id(client, current[0])
            if nxt != current[0]:
                current[0] = nxt
                return job_status()
        if status == "PENDING":
            return "QUEUED", queue_line(client, settings, current[0])
        message = strip_ansi(info.message or "")
        lost = lost_driver(message) if status == "FAILED" else None
        return status, end_run(settings.mlflow_uri, info.metadata or {}, lost) if lost else message

    return follow(settings.mlflow_uri, run_id, job_status, say=say, live=live)


def tail_lines(client, job_id: str, on_line: Callable[[str], None]) -> None:
    """Call `on_line` with each line of the job's log, from its start until the job ends."""

    async def tail():
        buffer = ""
        async for chunk in client.tail_job_logs(job_id):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                on_line(line)
        if buffer:
            on_line(buffer)

    asyncio.run(tail())


def follow_result(client, job_id: str, mark: str, what: str, progress: Callable[[int, int], None] | None = None) -> dict:
    """Follow a job that prints `MARK progress DONE/TOTAL`, `MARK result JSON` and `MARK error
    LINE` (the evaluation and batch drivers) to its end, through the copies the queue hands back
    to Ray -> its result plus "job_id". `progress(done, total)` as lines come. Raises
    Img2ImgError with the job's error line, or its reason when it failed, or when it printed no
    result (`what` names the kind of job)."""
    found: dict = {}

    def on_line(line: str) -> None:
        if not line.startswith(mark):
            return
        kind, _, rest = line[len(mark):].strip().partition(" ")
        if kind == "progress" and progress:
            done, _, total = rest.partition("/")
            progress(int(done), int(total))
        elif kind == "result":
            found["result"] = json.loads(rest)
        elif kind == "error":
            found["error"] = rest

    while True:
        tail_lines(client, job_id, on_line)
        while (status := _status(client, job_id)) not in TERMINAL:
            time.sleep(1)
        nxt = admission.current_id(client, job_id) if status == "STOPPED" else job_id
        if nxt == job_id:
            break
        job_id = nxt  # handed back to Ray behind a higher priority: follow its new id
    if "error" in found:
        raise Img2ImgError(found["error"])
    if status != "SUCCEEDED":  # the job's own reason: one more request, only on failure
        raise outcome_error(job_id, status, job_info(client, job_id)["message"])
    if "result" not in found:
        raise Img2ImgError(f"{what} job {job_id} printed no result; see `img2img jobs logs {job_id}`")
    return {**found["result"], "job_id": job_id}


def queue_entries(client, settings: Settings) -> dict[str, QueueEntry]:
    """{Ray id: QueueEntry} of the jobs waiting in the queue (stopped ones left out)."""
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    return {e.job_id: e for e in queue_view(client, cap, cancelled=_cancelled(client, settings))}


def queue_line(client, settings: Settings, job_id: str) -> str:
    """`position 2 of 3, waiting 1m05s: needs 3 CPUs, 1 free; behind raysubmit_...`."""
    entries = queue_entries(client, settings)
    e = entries.get(job_id)
    if e is None:
        return "waiting for Ray to start it"
    return f"position {e.position} of {len(entries)}, waiting {_elapsed(e.waited_s)}: {e.waiting_for()}"


def _cancelled(client, settings: Settings) -> set[str]:
    """Queued jobs stopped by the user (their MLflow run already KILLED); Ray ends each when its
    turn comes, without starting it."""
    out = set()
    try:
        ml = MlflowClient(settings.mlflow_uri)
        for job, _ in admission.queued(client):
            run_id = (job.metadata or {}).get("run_id")
            if run_id and ml.get_run(run_id).info.status == "KILLED":
                out.add(job.submission_id)
    except Exception:
        pass
    return out


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def job_rows(client, settings: Settings | None = None) -> list[list]:
    """[id, status, model, variant, dataset, started, duration] of every training, evaluation,
    search and batch job, newest first. A queued job's status is `QUEUED #N` (its place) and its duration says
    how long it has waited and for what (`waiting 1m05s: needs 3 CPUs, 1 free; behind ...`); a
    running job's duration is its elapsed time so far (`12s so far`); a preempted job's copy
    adds `(preempted by ID at step N, resumes there)`."""
    rows = []
    every = client.list_jobs()
    replaced = admission.replaced(every)  # handed back to Ray behind a higher priority: their copy is listed
    jobs = [j for j in every if (j.metadata or {}).get("img2img") in ("train", "eval", "search", "batch")
            and j.submission_id not in replaced]
    entries = queue_entries(client, settings) if settings is not None else {}
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        meta = j.metadata or {}
        status = str(j.status).split(".")[-1]
        start = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else ""
        if status == "PENDING" and j.submission_id in entries:
            e = entries[j.submission_id]
            status, dur = f"QUEUED #{e.position}", f"waiting {_elapsed(e.waited_s)}: {e.waiting_for()}"
        elif status == "PENDING":
            status, dur = "STOPPING", "stopped while queued"
        elif j.start_time and j.end_time:
            dur = _elapsed((j.end_time - j.start_time) / 1000)
        elif j.start_time:
            dur = f"{_elapsed(time.time() - j.start_time / 1000)} so far"
        else:
            dur = ""
        if meta.get("preempted_by"):
            dur += f" (preempted by {meta['preempted_by']} at step {meta.get('resume_step')}, resumes there)"
        model = meta.get("model") or ""
        kind = "" if meta.get("img2img") == "train" else f"{meta.get('img2img')} "
        rows.append([j.submission_id, status, f"{kind}{model}".strip(), meta.get("variant", ""),
                     meta.get("dataset"), start, dur])
    return rows


def job_info(client, job_id: str) -> dict:
    try:
        info = client.get_job_info(job_id)
    except Exception:
        raise Img2ImgError(f"no job {job_id!r} on this cluster; list them with: img2img jobs ls") from None
    # Ray's message on failure embeds 20,000 characters of coloured log: keep its last lines.
    raw, status, meta = strip_ansi(info.message or ""), str(info.status).split(".")[-1], info.metadata or {}
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    message = lines[0] if len(lines) <= 1 else "\n".join([lines[0].split(",")[0] + ":", *lines[-3:]])
    lost = lost_driver(raw) if status == "FAILED" else None
    if lost:  # Ray's words are an actor's obituary: say what it means for the job, and what next
        message = lost_line(lost, meta)
    return {"job_id": job_id, "status": status, "message": message, **({"driver_lost": lost} if lost else {}),
            **meta}


def job_summary(client, settings: Settings, job_id: str) -> dict:
    """job_info plus the progress line read from the job's MLflow run (when it has one), and its
    place in the queue while it waits."""
    info = job_info(client, admission.current_id(client, job_id))
    if info.get("driver_lost"):  # nobody of the job is left to end its run: the first reader does
        info["error"] = info["message"] = end_run(settings.mlflow_uri, info, info.pop("driver_lost"))
    if info["status"] == "PENDING":
        info["queue"] = queue_line(client, settings, info["job_id"])
    if info.get("img2img") == "search" and info.get("run_id"):
        from jobs.search.trials import progress  # imports Ray Tune: only for a search

        try:
            info.update(progress(settings.mlflow_uri, info["run_id"]))
        except Exception:
            info["progress"] = "(MLflow run not readable)"
    elif info.get("run_id"):
        try:
            snap = read(settings.mlflow_uri, info["run_id"], info["status"], info.get("message") or "")
            info["progress"] = snap.line()
            if snap.preempted:
                info["preempted"] = snap.preempted
            if snap.node_lost:
                info["node_lost"] = snap.node_lost
            if snap.waiting:  # the worker group waits for Ray to place it
                info["waiting"] = snap.waiting
            if snap.checkpoint_step is not None:  # the step a restart resumes from
                info["checkpoint_step"] = snap.checkpoint_step
            if snap.starts > 1:  # Ray Train restarted the workers (a node or worker lost)
                info["restored_step"] = snap.restored
            if snap.error:
                info["error"] = snap.error
            if snap.warnings:  # the job's verdicts on its model, e.g. WORSE than its input
                info["warnings"] = snap.warnings
            for k, v in snap.extra.items():
                info[k] = round(v, 2)
        except Exception:
            info["progress"] = "(MLflow run not readable)"
    return info


def stop(client, settings: Settings, job_id: str, wait_s: float = 30) -> str:
    """Stop a job. -> "stopped" (its processes are gone and its CPUs free when this returns,
    within `wait_s` seconds), "cancelled" (it was queued: Ray ends it when its turn comes,
    without starting it), or "already SUCCEEDED/FAILED/STOPPED" when it had ended. Its MLflow
    run ends KILLED (the driver marks it on SIGTERM; done here too in case it could not)."""
    job_id = admission.current_id(client, job_id)
    info = job_info(client, job_id)
    if info["status"] in TERMINAL:
        return f"already {info['status']}"
    queued = info["status"] == "PENDING"
    if queued and info.get("run_id"):
        _mark_killed(settings, info["run_id"])  # first: the driver leaves a run it finds KILLED alone
    asked_ms = int(time.time() * 1000)
    client.stop_job(job_id)
    if not queued:  # one budget for both: the driver ends (Ray's SIGTERM, then SIGKILL), then its actors
        deadline = time.time() + wait_s
        poll_until(lambda: _status(client, job_id) in TERMINAL, wait_s, interval_s=0.5)
        ray_job = getattr(client.get_job_info(job_id), "job_id", None)
        if ray_job:
            poll_until(lambda: not _live_actors(settings, ray_job), max(deadline - time.time(), 1), interval_s=0.5)
    if info.get("run_id"):
        _mark_killed(settings, info["run_id"], since_ms=asked_ms)
    return "cancelled" if queued else "stopped"


def _mark_killed(settings: Settings, run_id: str, since_ms: int | None = None) -> None:
    """End the job's run KILLED, and its child runs (a search's trials, whose processes ended
    with the job's) still RUNNING or ended FAILED at or after `since_ms`, when the stop was asked
    for (ms since the epoch): the stop reached their training as an error."""
    try:
        ml = MlflowClient(settings.mlflow_uri)
        run = ml.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            ml.set_tag(run_id, "stopped", "stopped by the user")
            ml.set_tag(run_id, TAG_PHASE, "stopped")
            ml.set_terminated(run_id, status="KILLED")
        end_cut_off_children(ml, run_id, since_ms, {"stopped": "the job was stopped"})
    except Exception:
        log.warning("could not mark MLflow run %s KILLED", run_id)


def _live_actors(settings: Settings, ray_job_id: str) -> list[dict]:
    """The job's actors still alive that hold CPUs or GPUs (its Train workers, Scorers), from
    Ray's state API. Ray Data's detached bookkeeping actors (`_StatsActor`, 0 CPUs) outlive
    every job by design and are left out."""
    try:
        r = httpx.get(settings.ray_address.rstrip("/") + "/api/v0/actors",
                      params={"limit": 1000, "detail": "true", "filter_keys": ["job_id", "state"],
                              "filter_predicates": ["=", "="], "filter_values": [ray_job_id, "ALIVE"]},
                      headers=settings.ray_auth_headers(), timeout=10)
        actors = ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    except Exception:
        return []
    return [a for a in actors if any(v > 0 for k, v in (a.get("required_resources") or {}).items()
                                     if "CPU" in k or "GPU" in k)]
