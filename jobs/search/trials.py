"""The search's table of trials: kept live in the parent MLflow run while Tune runs (a Tune
callback), read back by `img2img tune --follow` and `jobs status`, and printed at the end."""

from __future__ import annotations

import json
import logging
import math
import time

from mlflow.tracking import MlflowClient
from ray import tune

from jobs.search.spec import METRIC

log = logging.getLogger(__name__)
TAG_TRIALS = "search_trials"  # JSON list of rows (see `TrialTable.rows`), on the parent run
TAG_TRIAL = "search_trial"  # on a child run: its Tune trial id
TAG_OUTCOME = "search_outcome"  # on a child run: finished | stopped early | failed
# On a trial's latest child run (an earlier start ended by PBT or a resume has none): the last
# step whose report the search counted. A trial the scheduler stops
# keeps training until Tune's stop reaches it, so its run may log a report or two past this step;
# those arrive after the decision and are not ranked.
TAG_COUNTED_STEP = "search_counted_step"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests the child runs under the search
PUBLISH_EVERY_S = 3.0


def outcome(last_step: int, total_steps: int, error: bool) -> str:
    """What became of a trial: failed, stopped early (by the scheduler, before its last step) or
    finished."""
    if error:
        return "failed"
    return "finished" if last_step >= total_steps else "stopped early"


def run_status(current: str, trial_outcome: str) -> str | None:
    """The MLflow status a trial's child run ends with, given its status now and the trial's
    `outcome`; None to leave it. A trial Tune stopped never ends its own run (RUNNING), or ends it
    FAILED when the stop reached its training mid-step as an error: stopped early is KILLED."""
    if trial_outcome == "stopped early" and current in ("RUNNING", "FAILED"):
        return "KILLED"
    if current == "RUNNING":
        return "FAILED"
    return None


class TrialTable(tune.Callback):
    """Tune callback: one row per trial (`rows`: {"trial", "params", "status", "step",
    "val_psnr" (latest, dB), "best_val_psnr" (dB), "samples_per_s"}), published as the parent
    run's `TAG_TRIALS` tag at most every `PUBLISH_EVERY_S` seconds and whenever a trial ends."""

    def __init__(self, tracking_uri: str, run_id: str, keys: list[str], total_steps: int):
        self.tracking_uri, self.run_id, self.keys, self.total_steps = tracking_uri, run_id, keys, total_steps
        self.rows: dict[str, dict] = {}
        self._published = 0.0

    def _row(self, trial) -> dict:
        row = self.rows.setdefault(trial.trial_id, {
            "trial": trial.trial_id, "params": {k: trial.config.get(k) for k in self.keys}, "status": "RUNNING",
            "step": 0, "val_psnr": None, "best_val_psnr": None, "samples_per_s": None})
        return row

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)
        self.publish(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["params"] = {k: trial.config.get(k) for k in self.keys}  # PBT changes them
        row["step"] = int(result.get("step", row["step"]))
        value = result.get(METRIC)
        if isinstance(value, (int, float)) and math.isfinite(value):
            row["val_psnr"] = round(float(value), 4)
            row["best_val_psnr"] = max(row["best_val_psnr"] or float("-inf"), row["val_psnr"])
        if result.get("samples_per_s") is not None:
            row["samples_per_s"] = round(float(result["samples_per_s"]), 2)
        self.publish()

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row["status"] = outcome(row["step"], self.total_steps, False)
        self.publish(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "failed"
        self.publish(force=True)

    def publish(self, force: bool = False) -> None:
        if not force and time.time() - self._published < PUBLISH_EVERY_S:
            return
        self._published = time.time()
        try:
            MlflowClient(self.tracking_uri).set_tag(self.run_id, TAG_TRIALS, json.dumps(list(self.rows.values())))
        except Exception:  # the live table is a display: never fail the search over it
            log.warning("could not publish the trials table to run %s", self.run_id)


def read_rows(tracking_uri: str, run_id: str) -> list[dict]:
    """The trials table a search published (`TrialTable`), [] before its first trial."""
    tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    try:
        return json.loads(tags.get(TAG_TRIALS) or "[]")
    except ValueError:
        return []


def ranked(rows: list[dict]) -> list[dict]:
    """Rows best first by best val PSNR (trials without one last)."""
    return sorted(rows, key=lambda r: -(r.get("best_val_psnr") if r.get("best_val_psnr") is not None
                                        else float("-inf")))


def progress(tracking_uri: str, run_id: str) -> dict:
    """A search's progress for `jobs status`: {"trials": counts by status, "best": the best trial
    so far (its values and best val PSNR), "registered": the version, once registered}."""
    rows = ranked(read_rows(tracking_uri, run_id))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out = {"trials": f"{len(rows)}" + (f" ({', '.join(f'{n} {s}' for s, n in counts.items())})" if rows else "")}
    if rows and rows[0].get("best_val_psnr") is not None:
        out["best"] = f"{rows[0]['trial']} {json.dumps(rows[0]['params'])}: val PSNR {rows[0]['best_val_psnr']:.2f} dB"
    version = MlflowClient(tracking_uri).get_run(run_id).data.tags.get("registered_version")
    if version:
        out["registered"] = f"version {version}"
    return out
