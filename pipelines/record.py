"""Where pipelines are recorded, and their step cache: MLflow. One parent run per pipeline run
(experiment `PIPELINES_EXPERIMENT`), one child run per step, tagged with the step's cache key
(`pipelines.spec.cache_key`), its state and its outputs (`out.<name>` tags). A step whose key has
a FINISHED child run in any earlier pipeline run is a cache hit: its outputs are reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from cluster.errors import Img2ImgError
from registry.tracking import experiment_id

PIPELINES_EXPERIMENT = "img2img-pipelines"
KIND, STEP, KEY, STATE = "img2img.pipeline", "pipeline.step", "pipeline.key", "pipeline.state"
JOB, OUTCOME, ERROR, SPEC, NAME = "pipeline.job", "pipeline.outcome", "pipeline.error", "pipeline.spec", "pipeline.name"
STEP_JOB, CACHED, DURATION, OUT = "pipeline.step_job", "pipeline.cached", "pipeline.duration_s", "out."
NOTIFIED = "pipeline.notified"  # what became of the webhook (pipelines.notify.send's line)
# step states: running -> done | failed | skipped; a cache hit is done with pipeline.cached=true
DONE, FAILED, RUNNING, SKIPPED = "done", "failed", "running", "skipped"


@dataclass
class StepView:
    """One step of a pipeline run as `pipeline status` shows it."""

    step: str
    state: str
    cached: bool = False
    duration_s: float | None = None
    outputs: dict = field(default_factory=dict)
    error: str = ""
    job_id: str = ""


@dataclass
class PipelineView:
    """One pipeline run: its id (the Ray job id), name, state (RUNNING, FINISHED, FAILED,
    KILLED), outcome line, error, start (epoch s) and steps."""

    job_id: str
    run_id: str
    name: str
    state: str
    outcome: str = ""
    error: str = ""
    started: float = 0.0
    ended: float | None = None
    steps: list[StepView] = field(default_factory=list)
    notified: str = ""  # the webhook's delivery, when the pipeline has one

    def to_dict(self) -> dict:
        return {"id": self.job_id, "run_id": self.run_id, "name": self.name, "state": self.state,
                "outcome": self.outcome, "error": self.error, "started": self.started, "ended": self.ended,
                "steps": [s.__dict__ for s in self.steps], "notified": self.notified}


def _client(mlflow_uri: str) -> MlflowClient:
    return MlflowClient(mlflow_uri)


def start_pipeline(mlflow_uri: str, name: str, spec_json: str, job_id: str) -> str:
    """Create the parent run of a pipeline run -> its MLflow run id."""
    c = _client(mlflow_uri)
    run = c.create_run(experiment_id(c, PIPELINES_EXPERIMENT), run_name=name,
                       tags={KIND: "true", NAME: name, JOB: job_id, SPEC: spec_json[:7900]})
    return run.info.run_id


def start_step(mlflow_uri: str, parent: str, step: str, key: str) -> str:
    c = _client(mlflow_uri)
    exp = c.get_run(parent).info.experiment_id
    run = c.create_run(exp, run_name=step, tags={"mlflow.parentRunId": parent, STEP: step, KEY: key,
                                                  STATE: RUNNING})
    return run.info.run_id


def set_tags(mlflow_uri: str, run_id: str, tags: dict) -> None:
    _client(mlflow_uri).log_batch(run_id, tags=[RunTag(k, str(v)[:7900]) for k, v in tags.items()])


def end_step(mlflow_uri: str, run_id: str, state: str, outputs: dict | None = None, started: float = 0.0,
             cached: bool = False, error: str = "") -> None:
    tags = {STATE: state, CACHED: str(cached).lower(), **{OUT + k: v for k, v in (outputs or {}).items()}}
    if started:
        tags[DURATION] = f"{time.time() - started:.1f}"
    if error:
        tags[ERROR] = error
    set_tags(mlflow_uri, run_id, tags)
    _client(mlflow_uri).set_terminated(run_id, "FAILED" if state == FAILED else "FINISHED")


def end_pipeline(mlflow_uri: str, run_id: str, status: str, outcome: str = "", error: str = "") -> None:
    tags = {k: v for k, v in ((OUTCOME, outcome), (ERROR, error)) if v}
    if tags:
        set_tags(mlflow_uri, run_id, tags)
    _client(mlflow_uri).set_terminated(run_id, status)


def cached(mlflow_uri: str, step: str, key: str) -> dict | None:
    """The outputs of the latest finished run of `step` with cache key `key`, or None."""
    c = _client(mlflow_uri)
    exp = c.get_experiment_by_name(PIPELINES_EXPERIMENT)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], f"tags.`{KEY}` = '{key}' and tags.`{STATE}` = '{DONE}' "
                         f"and tags.`{STEP}` = '{step}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    return {k[len(OUT):]: v for k, v in runs[0].data.tags.items() if k.startswith(OUT)}


def _view(c: MlflowClient, run) -> PipelineView:
    tags = run.data.tags
    children = c.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                             order_by=["attributes.start_time ASC"], max_results=100)
    steps = []
    for ch in children:
        t = ch.data.tags
        steps.append(StepView(t.get(STEP, ch.info.run_name), t.get(STATE, ""), t.get(CACHED) == "true",
                              float(t[DURATION]) if t.get(DURATION) else None,
                              {k[len(OUT):]: v for k, v in t.items() if k.startswith(OUT)}, t.get(ERROR, ""),
                              t.get(STEP_JOB, "")))
    return PipelineView(tags.get(JOB, ""), run.info.run_id, tags.get(NAME, run.info.run_name), run.info.status,
                        tags.get(OUTCOME, ""), tags.get(ERROR, ""), run.info.start_time / 1000,
                        run.info.end_time / 1000 if run.info.end_time else None, steps, tags.get(NOTIFIED, ""))


def step_runs(mlflow_uri: str, parent: str) -> list[tuple[str, str]]:
    """[(step, its child run id)] of a pipeline run, in the order they started."""
    c = _client(mlflow_uri)
    exp = c.get_run(parent).info.experiment_id
    runs = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", order_by=["attributes.start_time ASC"])
    return [(r.data.tags.get(STEP, r.info.run_name), r.info.run_id) for r in runs]


def pipelines(mlflow_uri: str, limit: int = 50) -> list[PipelineView]:
    """The latest pipeline runs, newest first (without their steps' details: see `pipeline`)."""
    c = _client(mlflow_uri)
    exp = c.get_experiment_by_name(PIPELINES_EXPERIMENT)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], f"tags.`{KIND}` = 'true'", order_by=["attributes.start_time DESC"],
                         max_results=limit)
    return [_view(c, r) for r in runs]


def pipeline(mlflow_uri: str, job_id: str | None = None) -> PipelineView:
    """One pipeline run by its id (the Ray job id; None: the latest). Raises Img2ImgError when
    there is none."""
    c = _client(mlflow_uri)
    exp = c.get_experiment_by_name(PIPELINES_EXPERIMENT)
    where = f"tags.`{KIND}` = 'true'" + (f" and tags.`{JOB}` = '{job_id}'" if job_id else "")
    runs = c.search_runs([exp.experiment_id], where, order_by=["attributes.start_time DESC"],
                         max_results=1) if exp else []
    if not runs:
        raise Img2ImgError(f"no pipeline {job_id!r}; list them with: img2img pipeline ls" if job_id
                           else "no pipeline has run yet; start one with: img2img pipeline run pipeline.yaml")
    return _view(c, runs[0])


def spec_of(view: PipelineView, mlflow_uri: str) -> dict:
    return json.loads(_client(mlflow_uri).get_run(view.run_id).data.tags.get(SPEC, "{}"))
