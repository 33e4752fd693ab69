"""Population Based Training for `img2img tune --scheduler pbt` (Jaderberg et al. 2017,
"Population Based Training of Neural Networks"; Ray Tune's `PopulationBasedTraining`).

The whole population trains at once. Every `perturbation_interval` optimiser steps, a trial in
the bottom quarter by val PSNR is stopped and restarted from the latest checkpoint of a trial
in the top quarter (its networks, optimiser moments and step), with that trial's values
mutated (`jobs.search.space.pbt_mutations`, kept inside the searched space by
`clip_to_space`).

A PBT clone needs a Tune checkpoint of the donor; Ray Train's `TuneReportCallback` hands Tune
only the metrics. So a PBT trial hands Tune every report itself (`fit_reporting_checkpoints`),
with a small Tune checkpoint, `clone.json`, naming the trial's real Ray Train checkpoint in the
store; a restarted trial reads it (`restored_from`) and resumes from that checkpoint the way
`img2img train --resume` does (`JobPlan.resume_from`). PBT trials keep every Ray Train
checkpoint (a donor's latest may not be among its best), so a PBT search stores
(reports x trials) checkpoints under checkpoints/RUN/.
"""

from __future__ import annotations

import functools
import json
import tempfile
import threading
from pathlib import Path

from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.tune import Checkpoint
from ray.tune.schedulers import PopulationBasedTraining
from ray.util.queue import Queue

from jobs.search.space import clip_to_space, pbt_mutations
from jobs.search.spec import SearchSpec

CLONE_FILE = "clone.json"  # in a PBT trial's Tune checkpoint: {"checkpoint", "trial", "run_id", "step"}


class LastStepKept(PopulationBasedTraining):
    """Tune's PBT, except that a trial's report at its last step (`last_step`) is never a
    perturbation point: a clone of a donor's final checkpoint has no step left to train, so
    exploiting there would only replace a finished trial with a copy of another. Its earlier
    reports still rank it and make it a donor."""

    def __init__(self, *, last_step: int, **kwargs):
        super().__init__(**kwargs)
        self.last_step = last_step

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("step", 0) >= self.last_step:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def scheduler(search: SearchSpec, total_steps: int) -> PopulationBasedTraining:
    """Tune's PBT over the searched keys, perturbing every `search.perturbation_interval` steps
    (default: a quarter of the trials' steps), never at the trials' last step `total_steps`."""
    dims = search.dims()
    return LastStepKept(
        last_step=total_steps,
        time_attr="step", perturbation_interval=search.perturbation_interval or max(1, total_steps // 4),
        hyperparam_mutations=pbt_mutations(dims), custom_explore_fn=functools.partial(clip_to_space, dims=dims))


class HandToTrial(UserCallback):
    """Ray Train callback (runs in the Train controller): every report's rank-0 metrics, with
    its checkpoint's path in the store as `checkpoint_path`, onto `queue`, read by the trial."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        out = dict(metrics[0])
        if checkpoint is not None:
            out["checkpoint_path"] = checkpoint.path
        self.queue.put(out)  # blocks (size 1) until the trial has handed the last one to Tune


def fit_reporting_checkpoints(build, trial_id: str, run_id: str):
    """Run the trainer `build(callbacks)` returns, handing each of its reports to Tune with a
    `CLONE_FILE` checkpoint naming its Ray Train checkpoint, trial and run. -> the fit's Result;
    raises what the fit raised."""
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = build([HandToTrial(queue)])
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the trial's thread below
            outcome["error"] = e
        finally:
            queue.put(None)

    thread = threading.Thread(target=fit, name="pbt-trial-fit", daemon=True)
    thread.start()
    while (metrics := queue.get()) is not None:
        path = metrics.get("checkpoint_path")
        if not path:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="img2img-clone-") as tmp:
            Path(tmp, CLONE_FILE).write_text(json.dumps({"checkpoint": path, "trial": trial_id, "run_id": run_id,
                                                         "step": metrics.get("step")}))
            tune.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def restored_from() -> dict | None:
    """The `CLONE_FILE` of the checkpoint Tune started this trial from (PBT: a donor's latest;
    `--resume`: the trial's own), or None for a trial starting from scratch."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return json.loads(Path(d, CLONE_FILE).read_text())
