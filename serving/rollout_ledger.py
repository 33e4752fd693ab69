"""The one Ray actor that holds a rollout's numbers (serving.rollout.Ledger) for every ingress
replica, and the MLflow run that records each rollout: opened when it starts, closed with its
numbers and decision when it is promoted or aborted (by a user, or automatically here)."""

from __future__ import annotations

import logging
from typing import Any

import ray

from serving.rollout import LIVE, Ledger, Plan

log = logging.getLogger("img2img.serve")
ACTOR, NAMESPACE = "img2img-rollout-ledger", "img2img"
EXPERIMENT = "rollouts"


@ray.remote(num_cpus=0)
class LedgerActor:
    """serving.rollout.Ledger behind one named, detached actor (calls run one at a time)."""

    def __init__(self):
        self.ledger = Ledger()

    def begin(self, plan: dict) -> str:
        return self.ledger.begin(Plan(**plan))

    def record(self, role: str, latency_s: float, ok: bool, fallback: bool = False) -> str:
        return self._watch(self.ledger.record, role, latency_s, ok, fallback)

    def record_pair(self, champion_s: float, challenger_s: float, ok: bool, psnr_db: float | None) -> str:
        return self._watch(self.ledger.record_pair, champion_s, challenger_s, ok, psnr_db)

    def summary(self) -> dict:
        return self.ledger.summary()

    def _watch(self, fn, *args) -> str:
        before = self.ledger.state
        state = fn(*args)
        if before in LIVE and state == "aborted" and self.ledger.plan is not None:
            log.warning("rollout %s aborted: %s", self.ledger.plan.id, self.ledger.reason)
            try:  # the decision is in the ledger already; the run is closed again by `rollout abort`
                close_run(self.ledger.plan.tracking_uri, self.ledger.plan.run_id, self.ledger.summary())
            except Exception:
                log.exception("could not record the automatic abort in MLflow")
        return state


def ledger():
    """The ledger actor's handle, created by the first replica that asks (get_if_exists: two
    replicas starting at once get the same actor)."""
    return LedgerActor.options(name=ACTOR, namespace=NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote()


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


def close_run(tracking_uri: str | None, run_id: str | None, summary: dict[str, Any]) -> None:
    """Log a rollout's per-version numbers (`summary`: serving.rollout.Ledger.summary) and its
    decision, reason and who took it to its run, and end the run (once: an ended run is left)."""
    if not tracking_uri or not run_id:
        return
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    if c.get_run(run_id).info.status != "RUNNING":
        return
    for role in ("champion", "challenger"):
        for key, value in summary[role].items():
            if value is not None:
                c.log_metric(run_id, f"{role}_{key}", float(value))
    for key, value in summary["comparison"].items():
        if value is not None:
            c.log_metric(run_id, f"shadow_{key}", float(value))
    c.log_metric(run_id, "fallbacks", float(summary["fallbacks"]))
    for key in ("state", "reason", "decided_by"):
        c.set_tag(run_id, "decision" if key == "state" else key, str(summary[key])[:5000])
    c.set_terminated(run_id, "FINISHED")


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
