"""Live progress of a training job, read from the job's own MLflow run (metrics and the
`img2img.*` tags it keeps), never from Ray's log text.

Used by `img2img train --follow`, `img2img jobs status ID` and `img2img demo`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.live import Live
from rich.text import Text

from jobs.training.plan import UNLIMITED_STEPS
from registry.tracking import (
    TAG_CHECKPOINT,
    TAG_NODE_LOST,
    TAG_PHASE,
    TAG_PREEMPTED,
    TAG_RESTORED,
    TAG_STARTS,
    TAG_TIME_BUDGET,
    TAG_TOTAL_STEPS,
    TAG_TRAINING_SINCE,
    TAG_WAITING,
    TAG_WARNINGS,
)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
LOSS_KEYS = ("train_loss", "train_loss_G_L1", "train_loss_cycle", "train_loss_G_GAN")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """Text without terminal colour/cursor codes (for logs written to a pipe or file)."""
    return ANSI.sub("", text)


@dataclass
class Snapshot:
    """One reading of a job's progress. Times in seconds; PSNR in dB; None = not known yet."""

    status: str = "PENDING"  # the Ray job's status
    phase: str = "submitted"  # the job's own phase tag
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    loss: float | None = None
    loss_name: str = "loss"
    val_psnr: float | None = None
    val_gain_db: float | None = None
    samples_per_s: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    budget_s: float | None = None  # --time-budget, when it (not the step count) ends the run
    budget_used_s: float | None = None  # training time spent of that budget
    starts: int = 0
    restored: str | None = None
    checkpoint_step: int | None = None  # the latest checkpoint Ray Train holds: a restart resumes there
    preempted: str | None = None  # the latest preemption (MLflow tag TAG_PREEMPTED)
    node_lost: str | None = None  # the latest lost Ray node (jobs.training.watch.TAG_NODE_LOST)
    waiting: str | None = None  # while Ray cannot place the worker group yet (TAG_WAITING)
    message: str = ""
    error: str | None = None  # the job's own one-line reason when it failed (MLflow tag `error`)
    warnings: list[str] = field(default_factory=list)  # the job's verdicts, e.g. worse than its input (TAG_WARNINGS)
    extra: dict = field(default_factory=dict)

    def fields(self) -> list[str]:
        """The line's fields, most important first: status, step (of the total or of the time
        budget), val PSNR and gain, ETA; then loss, epoch, samples/s, elapsed; while it runs, the
        step of the checkpoint a restart would resume from."""
        # while the workers wait for Ray to place them there is no step rate: no ETA either
        parts = [f"{self.status.lower()}/{'waiting for workers' if self.waiting else self.phase}"]
        if self.budget_s and self.budget_used_s is not None:
            # the time budget ends this run first: a step total it will never reach would mislead
            used = min(self.budget_used_s / self.budget_s, 1.0)
            parts.append(f"step {self.step} ({100 * used:.0f}% of the {_hms(self.budget_s)} time budget)")
        elif self.total_steps and self.total_steps < UNLIMITED_STEPS:  # UNLIMITED: only a time budget ends it
            parts.append(f"step {self.step}/{self.total_steps} ({100 * self.step / self.total_steps:.0f}%)")
        else:
            parts.append(f"step {self.step}")
        if self.val_psnr is not None:
            gain = f" ({self.val_gain_db:+.2f} vs input)" if self.val_gain_db is not None else ""
            parts.append(f"val PSNR {self.val_psnr:.2f} dB{gain}")
        if self.eta_s is not None and self.status not in TERMINAL and not self.waiting:
            parts.append(f"ETA {_hms(self.eta_s)}")
        if self.loss is not None:
            parts.append(f"{self.loss_name} {self.loss:.4f}")
        parts.append(f"epoch {self.epoch:.1f}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:.1f} samples/s")
        parts.append(f"elapsed {_hms(self.elapsed_s)}")
        if self.checkpoint_step is not None and self.status not in TERMINAL:
            parts.append(f"checkpoint at step {self.checkpoint_step}")
        return parts

    def line(self, width: int | None = None) -> str:
        """`running/training | step 40/120 (33%) | val PSNR 27.10 dB (+1.42 vs input) | ETA 1:02 | ...`;
        with `width` (columns), broken between fields into lines of at most `width` characters
        (a field longer than that gets a line of its own), so no field is cut by the terminal.
        While the job waits in the queue: `queued: position 1 of 2, waiting 56s: needs ...`."""
        parts = [f"queued: {self.message}"] if self.status == "QUEUED" else self.fields()
        if width is None:
            return " | ".join(parts)
        lines = [parts[0]]
        for p in parts[1:]:
            if len(lines[-1]) + 3 + len(p) <= width:
                lines[-1] += " | " + p
            else:
                lines.append("  " + p)
        return "\n".join(lines)


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def read(tracking_uri: str, run_id: str, status: str = "RUNNING", message: str = "",
         rate: tuple[float, int] | None = None) -> Snapshot:
    """Read a run's progress. rate: (time, step) of an earlier reading, for the ETA."""
    run = MlflowClient(tracking_uri).get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    snap = Snapshot(status=status, message=message, phase=tags.get(TAG_PHASE, "submitted"))
    snap.step = int(m.get("step", 0))
    snap.total_steps = int(tags[TAG_TOTAL_STEPS]) if TAG_TOTAL_STEPS in tags else None
    snap.epoch = float(m.get("epoch", 0.0))
    loss_key = next((k for k in LOSS_KEYS if k in m), next((k for k in sorted(m) if k.startswith("train_")), None))
    if loss_key:
        snap.loss, snap.loss_name = m[loss_key], loss_key.removeprefix("train_")
    snap.val_psnr, snap.val_gain_db = m.get("val_psnr"), m.get("val_gain_db")
    snap.samples_per_s = m.get("samples_per_s")
    end = run.info.end_time / 1000 if status in TERMINAL and run.info.end_time else time.time()
    snap.elapsed_s = max(0.0, end - run.info.start_time / 1000) if run.info.start_time else 0.0
    snap.starts = int(tags.get(TAG_STARTS, "0"))
    snap.restored = tags.get(TAG_RESTORED)
    snap.checkpoint_step = int(tags[TAG_CHECKPOINT]) if TAG_CHECKPOINT in tags else None
    snap.preempted = tags.get(TAG_PREEMPTED)
    snap.node_lost = tags.get(TAG_NODE_LOST)
    snap.waiting = tags.get(TAG_WAITING) if status not in TERMINAL else None
    snap.error = tags.get("error")
    snap.warnings = [w for w in tags.get(TAG_WARNINGS, "").split("\n") if w]
    budget = float(tags[TAG_TIME_BUDGET]) if TAG_TIME_BUDGET in tags else None
    if snap.total_steps and rate and snap.step > rate[1]:
        steps_per_s = (snap.step - rate[1]) / max(time.time() - rate[0], 1e-9)
        snap.eta_s = (snap.total_steps - snap.step) / steps_per_s
    if budget is not None and TAG_TRAINING_SINCE in tags:
        used = (end if status in TERMINAL else time.time()) - float(tags[TAG_TRAINING_SINCE])
        left = max(budget - used, 0.0)
        reached = bool(snap.total_steps) and snap.step >= snap.total_steps
        if not reached and (snap.eta_s is None or left < snap.eta_s):  # the budget, not the step count, ends it
            snap.budget_s, snap.budget_used_s = budget, max(used, 0.0)
        snap.eta_s = left if snap.eta_s is None else min(snap.eta_s, left)
    snap.extra = {k: v for k, v in m.items() if k in ("steps_run", "epochs_run", "samples_run", "time_fit_s",
                                                       "time_job_s", "time_bookkeeping_s", "time_train_s",
                                                       "time_data_s")}
    return snap


def events(before: Snapshot | None, now: Snapshot) -> list[str]:
    """Lines worth keeping above the live display: preemptions, restarts, restores, phase changes."""
    out = []
    if before is None:
        return out
    if now.preempted and now.preempted != before.preempted:
        out.append(now.preempted)
    if now.node_lost and now.node_lost != before.node_lost:
        out.append(now.node_lost)
    if now.waiting and not before.waiting:
        out.append(now.waiting)
    elif before.waiting and not now.waiting and now.status not in TERMINAL:
        out.append("the cluster placed the workers: training goes on")
    if now.starts > max(before.starts, 1) and now.preempted and now.restored not in (None, "none"):
        out.append(f"resumed after the preemption from the checkpoint at step {now.restored}")
    elif now.starts > max(before.starts, 1):
        where = (f"restored the checkpoint at step {now.restored}" if now.restored not in (None, "none")
                 else "no checkpoint yet: restarting from the beginning")
        out.append(f"worker group restarted (start {now.starts}); {where}")
    elif now.starts == 1 and before.starts == 0 and now.restored not in (None, "none"):
        out.append(f"resumed from the checkpoint at step {now.restored}")
    phases = {"starting": "job started: starting the workers", "training": "workers started: training",
              "registering": "training done: registering the model"}
    if now.phase != before.phase and now.phase in phases:
        out.append(phases[now.phase])
    return out


def follow(tracking_uri: str, run_id: str, job_status: Callable[[], tuple[str, str]],
           say: Callable[[str], None] | None = None, interval: float = 2.0, live: bool | None = None,
           plain_every: float = 30.0) -> Snapshot:
    """Show a job's progress until it ends; -> the last Snapshot.

    job_status: -> (Ray job status, message). On a terminal: one live rich line, with event
    lines printed above it. Not on a terminal: a plain line at each event/validation and at
    least every `plain_every` seconds (no colour codes, no cursor movement)."""
    console = Console(highlight=False, soft_wrap=True)
    live = console.is_terminal if live is None else live
    say = say or (lambda msg: console.print(msg, markup=False))
    before: Snapshot | None = None
    mark: tuple[float, int] | None = None
    last_plain = 0.0

    def reading() -> Snapshot:
        nonlocal mark
        status, message = job_status()
        try:
            snap = read(tracking_uri, run_id, status, message, mark)
        except Exception:  # MLflow busy for a moment: keep the last reading
            snap = before or Snapshot(status=status, message=message)
            snap.status = status
        if snap.phase == "training" and (mark is None or snap.step < mark[1]):
            mark = (time.time(), snap.step)
        return snap

    display = Live(Text(""), console=console, refresh_per_second=4, transient=False) if live else None
    try:
        if display:
            display.start()
        while True:
            snap = reading()
            for line in events(before, snap):
                (display.console.print(line, markup=False) if display else say(line))
            new_val = before is not None and snap.val_psnr != before.val_psnr
            if display:
                display.update(Text(snap.line(console.width), no_wrap=True, overflow="ellipsis"))
            elif new_val or time.time() - last_plain >= plain_every or snap.status in TERMINAL:
                say(snap.line())
                last_plain = time.time()
            before = snap
            if snap.status in TERMINAL:
                return snap
            time.sleep(interval)
    finally:
        if display:
            display.stop()


def write_raw(text: str, stream=None) -> None:
    """Raw log text as it is (no wrapping); colour codes removed unless writing to a terminal."""
    stream = stream or sys.stdout
    stream.write(text if stream.isatty() else strip_ansi(text))
    stream.flush()
