"""The pipeline's Ray job: runs the steps in order, each a cache hit (its key's outputs reused,
`pipelines.record.cached`) or the job the CLI would have run (`pipelines.steps`), and records
every step as a child run of the pipeline's MLflow run.

`python -m pipelines.driver --spec JSON --run-id PARENT [--force STEP] --queue-deadline T`; without
`--run-id` (a KubeRay RayCronJob, `cluster/deploy/kuberay/raycronjob-pipeline.yaml`, starts it
with no client) the driver creates its parent run itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from cluster.admission import check_deadline
from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from pipelines import notify, record
from pipelines.spec import STEPS, PipelineSpec, cache_key
from pipelines.steps import STEP_FUNCS, Context, Kept, still_true

log = logging.getLogger("pipelines.driver")


class Stopped(BaseException):
    """SIGTERM (`pipeline stop`, `jobs stop`): end the running step's job too."""


def _stop(signum, frame):
    raise Stopped()


def run_steps(ctx: Context, parent: str, force: str | None = None) -> tuple[str, str, str]:
    """Run `ctx.spec`'s steps -> (MLflow status FINISHED | FAILED | KILLED, outcome line, error line)."""
    uri = ctx.settings.mlflow_uri
    forced_from = STEPS.index(force) if force else len(STEPS)
    current: dict = {}

    def on_job(job_id: str) -> None:
        current["job"] = job_id
        record.set_tags(uri, current["run"], {record.STEP_JOB: job_id})

    ctx.on_job = on_job
    hits = 0
    for step in ctx.spec.steps:
        inputs, run = STEP_FUNCS[step]
        started = time.time()
        current.clear()
        try:
            key = cache_key(step, inputs(ctx))
            current["run"] = record.start_step(uri, parent, step, key)
            hit = None if STEPS.index(step) >= forced_from else record.cached(uri, step, key)
            if hit is not None and still_true(ctx, step, hit):
                log.info("%s: cache hit %s", step, hit)
                ctx.outputs[step] = {**hit, "key": key}
                record.end_step(uri, current["run"], record.DONE, hit, started, cached=True)
                hits += 1
            else:
                log.info("%s: running", step)
                out = run(ctx)
                ctx.outputs[step] = {**out, "key": key}
                record.end_step(uri, current["run"], record.DONE, out, started)
                log.info("%s: done %s", step, out)
            if ctx.outputs[step].get("decision") == "keep":
                raise Kept(ctx.outputs[step]["outcome"], ctx.outputs[step])
        except Kept as kept:
            line, out = kept.args
            if "run" in current and step not in ctx.outputs:
                record.end_step(uri, current["run"], record.DONE, out, started)
            ctx.outputs.setdefault(step, out)  # the decision, for the webhook
            log.info("%s", line)
            return "FINISHED", _nothing_new(line, hits == ctx.spec.steps.index(step) + 1), ""
        except Stopped:
            if current.get("job"):
                _stop_job(ctx, current["job"])
            if "run" in current:
                record.end_step(uri, current["run"], record.FAILED, started=started, error="stopped by the user")
            return "KILLED", "", f"{step}: stopped by the user"
        except Exception as e:  # one line for the record: a user's mistake or the failed job's reason
            if not isinstance(e, Img2ImgError):
                log.exception("%s failed", step)
            error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "run" not in current:
                current["run"] = record.start_step(uri, parent, step, "")
            record.end_step(uri, current["run"], record.FAILED, started=started, error=error)
            return "FAILED", "", f"{step}: {error}"
    return "FINISHED", _nothing_new(outcome_line(ctx), hits == len(ctx.spec.steps)), ""


def _nothing_new(line: str, all_hits: bool) -> str:
    """A run whose every step was a cache hit changed nothing, and says so."""
    return f"nothing new (every step a cache hit): {line}" if all_hits else line


def outcome_line(ctx: Context) -> str:
    """What a pipeline that ran to its end left: the champion, and whether it is served."""
    name = ctx.spec.model_name
    promote = ctx.outputs.get("promote")
    if promote:
        what = f"{name} v{promote['champion']} is champion"
        if promote.get("changed") == "false":
            what += " (unchanged)"
    elif ctx.outputs.get("train"):
        what = f"trained {name} v{ctx.outputs['train']['version']}"
    elif ctx.outputs.get("ingest"):
        what = f"ingested {ctx.spec.dataset}"
    else:
        what = "done"
    deploy = ctx.outputs.get("deploy")
    if deploy and deploy.get("deployed") == "yes":
        what += f", served at {ctx.settings.serve_url}"
    return what


def _stop_job(ctx: Context, job_id: str) -> None:
    from jobs.manage import stop
    from jobs.training.client import job_client

    try:
        stop(job_client(ctx.settings), ctx.settings, job_id)
    except Exception as e:
        log.warning("could not stop step job %s: %s", job_id, e)


def job_start(what: str, argv: list[str] | None, add=lambda ap: None) -> tuple[argparse.Namespace, Settings, PipelineSpec]:
    """What a pipeline's or a schedule's Ray job does first: its arguments (`--spec`,
    `--queue-deadline` and those `add` declares), logging to its job log, its settings and spec."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--queue-deadline", type=float, default=None)
    add(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {what}: %(message)s", stream=sys.stdout)
    for chatty in ("ray", "urllib3", "httpx", "mlflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return args, get_settings(), PipelineSpec.model_validate_json(args.spec)


def own_job_id() -> str:
    """This driver's Ray job submission id (Ray's supervisor hands it to the driver in the job
    config's metadata), "" outside a Ray job."""
    try:
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))["metadata"]["job_submission_id"]
    except (KeyError, TypeError, ValueError):
        return ""


def main(argv: list[str] | None = None) -> int:
    def add(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--run-id", default=None)
        ap.add_argument("--force", default=None)

    args, settings, spec = job_start("pipeline", argv, add)
    if not args.run_id:
        args.run_id = record.start_pipeline(settings.mlflow_uri, spec.title, spec.to_json(), own_job_id())
    try:
        check_deadline(args.queue_deadline)
    except Img2ImgError as e:
        record.end_pipeline(settings.mlflow_uri, args.run_id, "FAILED", error=str(e))
        print(f"Error: {e}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    ctx = Context(settings, spec)
    status, outcome, error = run_steps(ctx, args.run_id, args.force)
    if spec.notify.webhook:  # before the run ends: `pipeline status` shows the delivery with the outcome
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        payload = notify.summary(spec.title, own_job_id(), args.run_id, status, outcome, error, spec.model_name,
                                 ctx.outputs)
        record.set_tags(settings.mlflow_uri, args.run_id, {record.NOTIFIED: notify.send(spec.notify.webhook, payload)})
    record.end_pipeline(settings.mlflow_uri, args.run_id, status, outcome, error)
    print(f"pipeline {status}: {outcome or error}", flush=True)
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
