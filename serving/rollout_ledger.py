"""The rollout's ledger: serving.rollout.Ledger in the enhancer app's own one-replica Serve
deployment `RolloutLedger` (so it starts, and goes, with the app: `serve rm` and a stack
teardown leave nothing behind), shared by every ingress replica through a DeploymentHandle.
It decides an automatic abort and a stepped canary's next share, and serialises clients that
start or end a rollout (`claim`). Also the MLflow run that records each rollout: opened when it
starts, closed with its numbers and decision when it is promoted or aborted (by a user, or
automatically here)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from serving.rollout import LIVE, Ledger, Plan

log = logging.getLogger("img2img.serve")
LEDGER_DEPLOYMENT = "RolloutLedger"
EXPERIMENT = "rollouts"


@serve.deployment(name=LEDGER_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=1000)
class RolloutLedger:
    """serving.rollout.Ledger behind one Serve replica. Its methods are coroutines without an
    await before their answer, so the replica's event loop runs them one at a time."""

    def __init__(self):
        self.ledger = Ledger()
        self.closing: set[asyncio.Task] = set()

    async def begin(self, plan: dict) -> dict:
        """Follow a plan (serving.rollout.Plan as data) -> {state, percent}."""
        self.ledger.begin(Plan(**plan))
        return self.ledger.view()

    async def record(self, role: str, latency_s: float, ok: bool, fallback: bool = False,
                     sharpness: float | None = None) -> dict:
        return self._watch(self.ledger.record, role, latency_s, ok, fallback, sharpness)

    async def record_pair(self, champion_s: float, challenger_s: float, ok: bool, psnr_db: float | None,
                          champion_sharpness: float | None = None, challenger_sharpness: float | None = None) -> dict:
        return self._watch(self.ledger.record_pair, champion_s, challenger_s, ok, psnr_db,
                           champion_sharpness, challenger_sharpness)

    async def record_many(self, events: list[tuple]) -> dict:
        """A replica's batch of answers (serving.rollout.Ledger.record_many) -> the view after it."""
        return self._watch(self.ledger.record_many, events)

    async def claim(self, token: str, what: str, ttl_s: float) -> str | None:
        return self.ledger.claim(token, what, ttl_s)

    async def release(self, token: str) -> None:
        self.ledger.release(token)

    async def summary(self) -> dict:
        return self.ledger.summary()

    def _watch(self, fn, *args) -> dict:
        before = self.ledger.state
        state = fn(*args)
        plan = self.ledger.plan
        if before in LIVE and state == "aborted" and plan is not None:
            log.warning("rollout %s aborted: %s", plan.id, self.ledger.reason)
            task = asyncio.get_running_loop().create_task(self._close(plan, self.ledger.summary()))
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
        return self.ledger.view()

    async def _close(self, plan: Plan, summary: dict) -> None:
        try:  # the decision is in the ledger already; the run is closed again by `rollout abort`
            await asyncio.to_thread(close_run, plan.tracking_uri, plan.run_id, summary)
        except Exception:
            log.exception("could not record the automatic abort in MLflow")


def open_run(tracking_uri: str, name: str, champion: str, challenger: str, plan: dict[str, Any]) -> str:
    """Start the MLflow run of a rollout of registered model `name` (experiment "rollouts"),
    tagged with both versions, its parameters logged; tags both model versions with the run id
    (`rollout_run_id`). -> the run id."""
    from mlflow.tracking import MlflowClient

    from registry.tracking import experiment_id, upsert

    c = MlflowClient(tracking_uri)
    run = c.create_run(experiment_id(c, EXPERIMENT), run_name=f"{name} v{champion} -> v{challenger} {plan['mode']}",
                       tags={"model": name, "champion_version": champion, "challenger_version": challenger,
                             "mode": plan["mode"], "rollout_id": plan["id"]})
    for key in ("percent", "sample"):
        c.log_param(run.info.run_id, key, plan[key])
    for key, value in plan["limits"].items():
        c.log_param(run.info.run_id, key, value)
    for version in (champion, challenger):
        upsert(c.set_model_version_tag, name, version, "rollout_run_id", run.info.run_id)
    return run.info.run_id


def _running(tracking_uri: str | None, run_id: str | None):
    """An MlflowClient when the run exists and is still RUNNING (ended once, left as it is), else None."""
    if not tracking_uri or not run_id:
        return None
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    return c if c.get_run(run_id).info.status == "RUNNING" else None


def close_run(tracking_uri: str | None, run_id: str | None, summary: dict[str, Any]) -> None:
    """Log a rollout's per-version numbers (`summary`: serving.rollout.Ledger.summary) and its
    decision, reason and who took it to its run, and end the run (once: an ended run is left)."""
    c = _running(tracking_uri, run_id)
    if c is None:
        return
    for role in ("champion", "challenger"):
        for key, value in summary[role].items():
            if value is not None:
                c.log_metric(run_id, f"{role}_{key}", float(value))
    for key, value in summary["comparison"].items():
        if isinstance(value, (int, float)):  # pairs and PSNR: shadow_*; output sharpness: output_*
            c.log_metric(run_id, f"{'output' if 'sharpness' in key else 'shadow'}_{key}", float(value))
    for i, step in enumerate((summary.get("steps") or {}).get("taken", [])):  # a stepped canary's shares over time
        c.log_metric(run_id, "challenger_percent", float(step["percent"]), timestamp=int(step["at"] * 1000), step=i)
    c.log_metric(run_id, "fallbacks", float(summary["fallbacks"]))
    for key in ("state", "reason", "decided_by"):
        c.set_tag(run_id, "decision" if key == "state" else key, str(summary[key])[:5000])
    c.set_terminated(run_id, "FINISHED")


def fail_run(tracking_uri: str | None, run_id: str | None, reason: str) -> None:
    """End a rollout's run FAILED with `reason` (tag, at most 5,000 characters), when it is still
    RUNNING: a rollout that never started serving has no numbers to log."""
    c = _running(tracking_uri, run_id)
    if c is None:
        return
    c.set_tag(run_id, "reason", reason[:5000])
    c.set_terminated(run_id, "FAILED")


def log_triplet(tracking_uri: str | None, run_id: str | None, image, name: str) -> None:
    """Store one before | champion | challenger image (`serving.rollout_compare.triplet`) in the
    rollout's run as `triplets/NAME.png`. Nothing without a run; an MLflow error is logged, never
    the request's concern."""
    if not tracking_uri or not run_id or image is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).log_image(run_id, image, f"triplets/{name}.png")
    except Exception:
        log.exception("could not store a rollout triplet in MLflow")


def cite_rollout(tracking_uri: str, name: str, version: str, run_id: str | None) -> None:
    """Tag `name` v`version` with the rollout run that promoted it and rewrite its model card,
    which cites that run."""
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    from registry.tracking import upsert, write_model_card

    c = MlflowClient(tracking_uri)
    upsert(c.set_model_version_tag, name, version, "promoted_by_rollout", run_id)
    write_model_card(c, name, version)
