"""The training driver's watch on its own run: node losses, waits for capacity, and stalls.

Recovery itself is Ray Train's (FailureConfig.max_failures: the worker group restarts from the
run's latest checkpoint in the object store), and so is waiting for capacity (the worker group's
placement group stays PENDING in Ray's GCS until the cluster has the CPUs: a node joins or
another job ends). This thread only makes it visible and bounded:

- a Ray node that was alive when the job started and is now dead is recorded on the run
  (MLflow tag `img2img.node_lost`, shown by `train --follow` and `jobs status`) within one poll;
- while the job's worker group waits for Ray to place it (e.g. the nodes left after a loss
  cannot hold it), what it waits for is on the run (`img2img.waiting_for_workers`), and that
  wait is not a stall;
- a run whose step has not moved for `stall_timeout_s` while it trains (e.g. the nodes left
  cannot hold its workers and its Ray Data tasks together: Ray then waits forever) is ended with
  the reason: the thread interrupts the driver's main thread (Ray Train aborts the run on that
  SIGINT), which marks the run FAILED with the reason and exits 1.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time

import ray
from mlflow.tracking import MlflowClient

from registry.tracking import TAG_CHECKPOINT, TAG_NODE_LOST, TAG_PHASE, TAG_STARTS, TAG_WAITING

log = logging.getLogger("img2img.train")


def lost_line(node: dict, step: int, remaining_cpus: float, checkpoint_step: int | None = None) -> str:
    """The one line a user sees for a lost node: which, at which step, what happens next.
    node: a `ray.nodes()` entry (NodeID, NodeManagerAddress); remaining_cpus: alive CPUs;
    checkpoint_step: the run's TAG_CHECKPOINT (None: no checkpoint yet, a restart begins again)."""
    where = (f"the checkpoint at step {checkpoint_step}" if checkpoint_step is not None
             else "the beginning (no checkpoint yet)")
    return (f"node {node.get('NodeID', '?')[:12]} ({node.get('NodeManagerAddress', '?')}) lost at step {step}; "
            f"Ray Train restarts the workers from {where} (within --max-failures) once the cluster, "
            f"{remaining_cpus:g} CPUs alive, can place them")


def waiting_line(bundles: list[dict], alive_cpus: float, free_cpus: float, since: float) -> str:
    """The line for a worker group Ray cannot place yet. bundles: the pending placement group's
    bundles (`{"CPU": n, ...}` each, one per worker); alive/free_cpus: the alive nodes' CPUs;
    since: epoch seconds the wait began."""
    cpus = [float(b.get("CPU", 0)) for b in bundles]
    each = f"{cpus[0]:g} CPU{'s' if cpus[0] != 1 else ''}" if cpus and len(set(cpus)) == 1 else "their CPUs"
    return (f"waiting since {time.strftime('%H:%M:%S', time.gmtime(since))} UTC for {len(cpus)} worker(s) x {each} "
            f"({sum(cpus):g} CPUs; {free_cpus:g} of the {alive_cpus:g} alive CPUs free): Ray starts them when a node "
            "joins or another job ends, within the queue timeout")


class Watch(threading.Thread):
    """Polls Ray's node table and the run's MLflow step every `interval_s` seconds (daemon).
    stall_timeout_s: seconds without a new step (or a worker-group restart) while the phase is
    "training" before the run is ended; 0 or None: never."""

    def __init__(self, tracking_uri: str, run_id: str, stall_timeout_s: float | None, interval_s: float = 5.0):
        super().__init__(name="img2img-watch", daemon=True)
        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.stall_timeout_s, self.interval_s = stall_timeout_s or 0.0, interval_s
        self.reason: str | None = None
        self._stop = threading.Event()
        self._alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        self._job_id = ray.get_runtime_context().get_job_id()
        self._waiting: str | None = None
        self._waiting_since = 0.0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        progress, since = None, time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                run = self.client.get_run(self.run_id)
                step = int(run.data.metrics.get("step", 0))
                now = (step, run.data.tags.get(TAG_STARTS))
                held = run.data.tags.get(TAG_CHECKPOINT)
                self._check_nodes(step, int(held) if held else None)
                waiting = self._check_waiting()
            except Exception:  # MLflow or the GCS busy for a moment: the next poll decides
                log.debug("watch poll failed", exc_info=True)
                continue
            if now != progress or waiting or run.data.tags.get(TAG_PHASE) != "training":
                progress, since = now, time.monotonic()
                continue
            if self.stall_timeout_s and time.monotonic() - since > self.stall_timeout_s:
                lost = run.data.tags.get(TAG_NODE_LOST)
                self.reason = (f"stalled: no training step for {self.stall_timeout_s:g}s at step {step}"
                               + (f" after {lost.split(';')[0]}" if lost else "")
                               + " (a worker hangs, or the nodes left have no CPU for its data); resubmit with "
                               f"--resume {self.run_id} when the cluster can run it")
                log.error(self.reason)
                _thread.interrupt_main()
                return

    def _check_waiting(self) -> bool:
        """Record (or clear) on the run that this job's worker group waits for Ray to place it.
        -> whether it waits now."""
        from ray.util.state import list_placement_groups

        pending = list_placement_groups(filters=[("creator_job_id", "=", self._job_id), ("state", "=", "PENDING")],
                                        detail=True, raise_on_missing_output=False)
        if not pending:
            if self._waiting:
                self.client.delete_tag(self.run_id, TAG_WAITING)
                log.info("the worker group was placed after waiting %.0f s", time.time() - self._waiting_since)
            self._waiting = None
            return False
        if not self._waiting:
            self._waiting_since = time.time()
        bundles = [b.get("unit_resources") or {} for pg in pending for b in (pg.bundles or [])]
        total, free = ray.cluster_resources(), ray.available_resources()
        line = waiting_line(bundles, total.get("CPU", 0.0), free.get("CPU", 0.0), self._waiting_since)
        if line != self._waiting:
            if not self._waiting:
                log.warning(line)
                print(f"WARNING: {line}", flush=True)
            self.client.set_tag(self.run_id, TAG_WAITING, line)
            self._waiting = line
        return True

    def _check_nodes(self, step: int, checkpoint_step: int | None) -> None:
        nodes = ray.nodes()
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for node_id, node in list(self._alive.items()):
            if node_id not in alive:
                cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive.values())
                line = lost_line(node, step, cpus, checkpoint_step)
                log.warning(line)
                print(f"WARNING: {line}", flush=True)
                self.client.set_tag(self.run_id, TAG_NODE_LOST, line)
                del self._alive[node_id]
        self._alive.update(alive)  # nodes that joined since can be lost too
