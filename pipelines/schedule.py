"""Schedules: a long-lived Ray job per schedule that submits the pipeline (through the admission,
as `pipeline run` does) every interval, or when the photos under an s3:// prefix change. Being a
cluster job, it outlives the client that created it; `pipeline unschedule` stops it.

`python -m pipelines.schedule --spec JSON (--every SECONDS | --on-new-data s3://B/P) [--debounce S]`
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time

from cluster import admission
from cluster.admission import Footprint, capacity, check_deadline
from cluster.errors import Img2ImgError
from cluster.settings import Settings
from jobs.training.client import admit, code_version, job_client
from pipelines import client as pipeline_client
from pipelines.driver import job_start
from pipelines.spec import PipelineSpec
from pipelines.steps import source_listing

log = logging.getLogger("pipelines.schedule")
SCHEDULE_CPUS = 0.05  # it sleeps and lists a prefix: a sliver, so its pipelines' steps still fit
SCHEDULE_FOOTPRINT = Footprint(0, 0.0, data_cpus=0.0, driver_cpus=SCHEDULE_CPUS)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """`30s`, `15m`, `24h`, `7d` (or plain seconds) -> seconds; at least 60 s. Raises Img2ImgError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise Img2ImgError(f"--every must be a duration like 30m, 24h or 7d, got {text!r}")
    seconds = float(m[1]) * UNITS[m[2] or "s"]
    if seconds < 60:
        raise Img2ImgError(f"--every must be at least 1 minute, got {text!r}")
    return seconds


def schedule(spec: PipelineSpec, settings: Settings, every: str | None = None, on_new_data: str | None = None,
             debounce_s: float = 60.0, poll_s: float = 30.0) -> str:
    """Check `spec` as `pipeline run` does, then start its schedule job -> the schedule's id (a
    Ray job id). `on_new_data` (s3://bucket/prefix) is also the pipeline's source when it has none;
    a change is acted on once the listing has been still for `debounce_s` seconds."""
    if (every is None) == (on_new_data is None):
        raise Img2ImgError("give one of --every DURATION or --on-new-data s3://bucket/prefix/")
    every_s = parse_every(every) if every is not None else None
    if on_new_data is not None:
        if not on_new_data.startswith("s3://"):
            raise Img2ImgError(f"--on-new-data must be an s3://bucket/prefix/, got {on_new_data!r}")
        if spec.source is None:
            spec.source = on_new_data
            spec.steps = ["ingest", *spec.steps] if "ingest" not in spec.steps else spec.steps
    if not (debounce_s >= 0 and poll_s > 0):
        raise Img2ImgError("--debounce must be at least 0 and --poll above 0 seconds")
    pipeline_client.check(spec, settings)
    cap = capacity(settings.ray_address, settings.ray_auth_headers())
    pipeline_client.check_nested(spec, cap, extra=SCHEDULE_CPUS)
    admit(settings, SCHEDULE_FOOTPRINT)
    spec.code_version = code_version()
    trigger = f"every {every}" if every else f"on new data under {on_new_data}"
    args = f"--every {every_s:.0f}" if every_s else f"--on-new-data {shlex.quote(on_new_data)}"
    entrypoint = (f"python -m pipelines.schedule --spec {shlex.quote(spec.to_json())} {args} "
                  f"--debounce {debounce_s:g} --poll {poll_s:g}")
    metadata = {"img2img": "schedule", "name": spec.title, "model": spec.model_name, "trigger": trigger}
    return admission.submit(job_client(settings), entrypoint=entrypoint, runtime_env=pipeline_client.pipeline_env(
        settings), metadata=metadata, footprint=SCHEDULE_FOOTPRINT, cap=cap)


def schedules(settings: Settings) -> list[dict]:
    """The live schedules: [{"id", "name", "model", "trigger", "status"}], newest first."""
    jobs = [j for j in job_client(settings).list_jobs() if (j.metadata or {}).get("img2img") == "schedule"
            and str(j.status).split(".")[-1] in ("PENDING", "RUNNING")]
    return [{"id": j.submission_id, "name": j.metadata.get("name", ""), "model": j.metadata.get("model", ""),
             "trigger": j.metadata.get("trigger", ""), "status": str(j.status).split(".")[-1]}
            for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)]


def unschedule(settings: Settings, schedule_id: str) -> str:
    """Stop a schedule (a pipeline it started runs on to its end) -> what happened."""
    from jobs.manage import stop

    if schedule_id not in {s["id"] for s in schedules(settings)}:
        raise Img2ImgError(f"no schedule {schedule_id!r}; list them with: img2img pipeline schedules")
    return stop(job_client(settings), settings, schedule_id)


def _fire(spec: PipelineSpec, settings: Settings, why: str, last: str | None) -> tuple[str | None, bool]:
    """Submit one pipeline run unless the previous one (`last`) is still going -> (the latest
    run's id, whether one was started)."""
    if last and pipeline_client._job_status(settings, last) in ("PENDING", "RUNNING"):
        log.info("%s, but pipeline %s is still running: not starting another", why, last)
        return last, False
    try:
        out = pipeline_client.submit(PipelineSpec.model_validate_json(spec.to_json()), settings,
                                     code=spec.code_version)
    except Img2ImgError as e:  # e.g. the source emptied meanwhile: said, and tried at the next trigger
        log.warning("%s, but the pipeline was refused: %s", why, e)
        return last, False
    log.info("%s: started pipeline %s", why, out["id"])
    return out["id"], True


def main(argv: list[str] | None = None) -> int:
    def add(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--every", type=float, default=None)
        ap.add_argument("--on-new-data", default=None)
        ap.add_argument("--debounce", type=float, default=60.0)
        ap.add_argument("--poll", type=float, default=30.0)

    args, settings, spec = job_start("schedule", argv, add)
    try:
        check_deadline(args.queue_deadline)
    except Img2ImgError as e:
        print(f"Error: {e}", flush=True)
        return 1
    last = None
    if args.every:
        while True:
            last, _ = _fire(spec, settings, f"every {args.every:.0f}s", last)
            time.sleep(args.every)
    seen, changed_at, acted = None, None, None
    while True:  # a listing acted on once it stopped changing for --debounce seconds
        try:
            listing = source_listing(args.on_new_data, settings)
        except Img2ImgError as e:
            log.info("nothing to ingest under %s yet (%s)", args.on_new_data, e)
            listing = []
        if listing != seen:
            seen, changed_at = listing, time.time()
        elif listing and listing != acted and time.time() - changed_at >= args.debounce:
            last, fired = _fire(spec, settings, f"new or changed objects under {args.on_new_data}", last)
            acted = listing if fired else acted
        time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
