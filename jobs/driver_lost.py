"""A job whose driver died with its node, said in one line, and its MLflow run ended.

Ray Jobs runs a job's driver under a supervisor actor on one node and never restarts it (no
`max_restarts`: ray-project/ray#41026; an opt-in retry is proposed in ray-project/ray#64104).
When that node is lost, Ray ends the job FAILED with "Job supervisor actor died: ..." and no
process of the job is left to end its MLflow run or to say what to do next. The first client
that reads the job (`jobs status`, `train --follow`) says it and ends the run FAILED with the
reason, so a run never stays RUNNING for a job that is gone. Losing a node that runs only
workers is another matter: Ray Train restarts them from the last checkpoint
(jobs/training/watch.py). In production, KubeRay's RayJob resubmits a failed job
(`backoffLimit`, cluster/deploy)."""

from __future__ import annotations

import logging
import re

from mlflow.tracking import MlflowClient

from jobs.training.stopping import end_cut_off_children
from registry.tracking import TAG_CHECKPOINT, TAG_PHASE

log = logging.getLogger(__name__)
SUPERVISOR_DIED = "Job supervisor actor died"  # Ray's message when the process holding a driver died


def _node(message: str) -> str:
    """The driver's node address from Ray's ActorDiedError text (`\tip: 10.0.0.7`), or ''."""
    found = re.search(r"\bip: ([0-9a-fA-F.:]+)", message)
    return f" at {found.group(1)}" if found else ""


def next_step(meta: dict, checkpoint_step: int | None) -> str:
    """What continues a job of this kind (its Ray metadata `meta`: img2img, run_id, dataset) once
    its driver was lost: the command, and what it keeps."""
    kind, run_id = meta.get("img2img"), meta.get("run_id", "RUN_ID")
    if kind == "train":
        at = (f"its checkpoint at step {checkpoint_step}" if checkpoint_step is not None
              else "its last checkpoint (step 0 if none was held)")
        return f"resume it from {at}: img2img train -d {meta.get('dataset', 'DATASET')} --resume {run_id}"
    if kind == "search":
        return f"resume it (finished trials are kept): img2img tune -d {meta.get('dataset', 'DATASET')} --resume {run_id}"
    if kind == "batch":
        return "run the same `img2img batch` command again: the outputs already written are skipped"
    if kind == "pipeline":
        return "run the same `img2img pipeline run` again: finished steps are cache hits"
    if kind == "eval":
        return "run the same `img2img eval` command again"
    if kind == "schedule":
        return "schedule it again: `img2img pipeline schedule ...`"
    return "submit it again"


def lost_driver(message: str) -> str | None:
    """What happened, for a FAILED job whose driver's process died with its node (Ray's
    `message`, whole, starts with SUPERVISOR_DIED), or None for any other end."""
    if not message or not message.startswith(SUPERVISOR_DIED):
        return None
    return f"the node running the job's driver{_node(message)} was lost (Ray Jobs does not restart a driver)"


def lost_line(lost: str, meta: dict, checkpoint_step: int | None = None) -> str:
    """The whole line a user sees: what happened (`lost_driver`) and what continues the work."""
    return f"{lost}; {next_step(meta, checkpoint_step)}"


def end_run(tracking_uri: str, meta: dict, lost: str) -> str:
    """A job whose driver was lost (`lost`, from `lost_driver`), with Ray metadata `meta`: end its
    MLflow run (meta run_id) FAILED, the line as its `error` tag, while it is still RUNNING, and
    a search's trials still RUNNING KILLED; whichever client reads the job first does it (ending
    is idempotent). -> the line: what happened and what continues the work (`next_step`, from
    the run's last checkpoint). MLflow errors are logged, not raised: the job's status matters
    more than this bookkeeping."""
    run_id = meta.get("run_id")
    if not run_id:
        return lost_line(lost, meta)
    try:
        client = MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        held = run.data.tags.get(TAG_CHECKPOINT)
        line = lost_line(lost, meta, int(held) if held is not None else None)
        if run.info.status == "RUNNING":
            client.set_tag(run_id, "error", line[:500])
            client.set_tag(run_id, TAG_PHASE, "failed")
            client.set_terminated(run_id, status="FAILED")
        if meta.get("img2img") == "search":
            end_cut_off_children(client, run_id, None, {"stopped": "the search's driver was lost"})
        return line
    except Exception:
        log.exception("could not end MLflow run %s of a job whose driver was lost", run_id)
        return lost_line(lost, meta)
