"""What Ray Train holds of a run, made visible: the step of its latest checkpoint.

A checkpoint a worker has uploaded is not yet one a restart resumes from: Ray Train's
controller registers it at its next poll of the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
2 s by default). A worker group lost in between restarts from the checkpoint before. This
callback runs in the controller after registration, so the run's tag
`img2img.checkpoint_step` (registry.tracking.TAG_CHECKPOINT) names exactly the step a restart
resumes from; `train --follow`, `jobs status` and the lost-node line show it.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.train.v2.api.callback import UserCallback

from registry.tracking import TAG_CHECKPOINT

log = logging.getLogger("img2img.train")


class TagHeldCheckpoint(UserCallback):
    """Ray Train callback: after each report that carries a checkpoint, set TAG_CHECKPOINT on
    the MLflow run `run_id` to that report's `step` (rank 0's metrics). A tracking server that
    does not answer costs the tag, never the run (logged as a warning)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is None or not metrics or "step" not in metrics[0]:
            return
        try:
            MlflowClient(self.tracking_uri).set_tag(self.run_id, TAG_CHECKPOINT, str(int(metrics[0]["step"])))
        except MlflowException as e:
            log.warning("could not record the checkpoint at step %s on run %s: %s",
                        metrics[0]["step"], self.run_id, e)
