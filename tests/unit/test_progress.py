"""The live progress line and its event lines (jobs.training.progress), from snapshots of a run."""

import io

import pytest

from jobs.training.progress import Snapshot, events, strip_ansi, write_raw


def _running():
    return Snapshot(status="RUNNING", phase="training", step=40, total_steps=120, epoch=5.0, loss=0.03125,
                    val_psnr=27.1, val_gain_db=1.42, samples_per_s=12.34, elapsed_s=75, eta_s=3725)


def test_line_shows_step_val_gain_eta_first_then_loss_epoch_rate_elapsed():
    assert _running().line() == ("running/training | step 40/120 (33%) | val PSNR 27.10 dB (+1.42 vs input) | "
                                 "ETA 1:02:05 | loss 0.0312 | epoch 5.0 | 12.3 samples/s | elapsed 1:15")


def test_a_running_job_shows_the_step_a_restart_resumes_from_and_a_finished_one_does_not():
    import dataclasses

    running = dataclasses.replace(_running(), checkpoint_step=36)
    assert running.line().endswith("| elapsed 1:15 | checkpoint at step 36")
    assert "checkpoint" not in dataclasses.replace(running, status="SUCCEEDED").line()


@pytest.mark.parametrize("columns", [40, 60, 80, 200])
def test_live_line_keeps_every_field_whole_at_any_width(columns):
    """The live display breaks between fields: nothing is cut at 60 or 80 columns."""
    text = _running().line(columns)
    assert all(len(line) <= columns for line in text.splitlines())
    for field in _running().fields():
        assert field in text, field
    if columns >= 80:  # what matters most comes first in a usual terminal
        assert "val PSNR" in text.splitlines()[0] and "ETA" in "".join(text.splitlines()[:2])
    assert text.splitlines()[0].startswith("running/training | step 40/120")


def test_a_run_only_a_time_budget_ends_shows_no_step_total():
    from jobs.training.plan import UNLIMITED_STEPS

    snap = Snapshot(status="RUNNING", phase="training", step=7, total_steps=UNLIMITED_STEPS)
    assert "step 7 |" in snap.line()
    budget = Snapshot(status="RUNNING", phase="training", step=7, budget_s=150, budget_used_s=75)
    assert "step 7 (50% of the 2:30 time budget)" in budget.line()


def test_finished_line_has_no_eta_and_unpaired_has_no_gain():
    snap = Snapshot(status="SUCCEEDED", phase="done", step=6, total_steps=6, val_psnr=12.0, eta_s=0)
    assert "ETA" not in snap.line() and "vs input" not in snap.line() and "val PSNR 12.00 dB" in snap.line()


def test_events_restart_restore_and_phases():
    a = Snapshot(phase="starting", starts=0)
    b = Snapshot(phase="training", starts=1)
    assert events(a, b) == ["workers started: training"]
    c = Snapshot(phase="training", starts=2, restored="40")
    assert events(b, c) == ["worker group restarted (start 2); restored the checkpoint at step 40"]
    d = Snapshot(phase="training", starts=3, restored="none")
    assert "no checkpoint yet" in events(c, d)[0]
    assert events(None, a) == [] and events(c, c) == []
    resumed = Snapshot(phase="starting", starts=1, restored="4")
    assert "resumed from the checkpoint at step 4" in events(a, resumed)


def test_a_preemption_is_told_once_then_the_resume_from_its_checkpoint():
    line = "preempted by raysubmit_abc, re-queued, resumes at step 17"
    training = Snapshot(status="RUNNING", phase="training", starts=1)
    preempted = Snapshot(status="QUEUED", phase="preempted", starts=1, preempted=line)
    assert events(training, preempted) == [line] and events(preempted, preempted) == []
    resumed = Snapshot(status="RUNNING", phase="training", starts=2, restored="17", preempted=line)
    assert events(preempted, resumed) == ["resumed after the preemption from the checkpoint at step 17",
                                          "workers started: training"]


def test_raw_logs_lose_colour_codes_off_a_terminal():
    text = "\x1b[36m(RayTrainWorker pid=1)\x1b[0m step 3 " + "x" * 200 + "\n"
    assert strip_ansi(text) == "(RayTrainWorker pid=1) step 3 " + "x" * 200 + "\n"
    out = io.StringIO()
    write_raw(text, out)
    assert out.getvalue() == strip_ansi(text)  # and not wrapped


def test_a_binding_time_budget_replaces_the_unreachable_step_total():
    # `demo` plans 240000 steps and a 5-minute budget: "step 103/240000 (0%)" would mislead
    snap = Snapshot(status="RUNNING", phase="training", step=103, total_steps=240000, budget_s=300,
                    budget_used_s=99, eta_s=201)
    line = snap.line()
    assert "step 103 (33% of the 5:00 time budget)" in line and "240000" not in line and "ETA 3:21" in line
    done = Snapshot(status="SUCCEEDED", phase="done", step=900, total_steps=240000, budget_s=300, budget_used_s=301)
    assert "step 900 (100% of the 5:00 time budget)" in done.line()


def test_a_lost_node_is_told_once_before_the_restore_from_its_checkpoint():
    from jobs.training.watch import lost_line

    node = {"NodeID": "d3528d0d51a1bef3", "NodeManagerAddress": "10.0.0.7"}
    line = lost_line(node, 12, 4.0, 8)
    assert line == ("node d3528d0d51a1 (10.0.0.7) lost at step 12; Ray Train restarts the workers from the "
                    "checkpoint at step 8 (within --max-failures) once the cluster, 4 CPUs alive, can place them")
    assert "from the beginning (no checkpoint yet)" in lost_line(node, 3, 4.0, None)
    a = Snapshot(phase="training", starts=1, step=12)
    b = Snapshot(phase="training", starts=1, step=12, node_lost=line)
    assert events(a, b) == [line] and events(b, b) == []
    c = Snapshot(phase="training", starts=2, step=8, restored="8", node_lost=line)
    assert events(b, c) == ["worker group restarted (start 2); restored the checkpoint at step 8"]


def test_workers_waiting_for_capacity_are_told_with_no_eta_and_then_their_placement():
    """After a node loss the nodes left may not hold the workers: Ray keeps their placement group
    pending; the line says what they wait for instead of an ETA that only grows."""
    import dataclasses

    from jobs.training.watch import waiting_line

    line = waiting_line([{"CPU": 2.0}] * 4, 8.0, 6.5, since=0.0)
    assert line == ("waiting since 00:00:00 UTC for 4 worker(s) x 2 CPUs (8 CPUs; 6.5 of the 8 alive CPUs free): "
                    "Ray starts them when a node joins or another job ends, within the queue timeout")
    assert "x their CPUs (3 CPUs" in waiting_line([{"CPU": 1.0}, {"CPU": 2.0}], 8.0, 0.0, since=0.0)
    before = dataclasses.replace(_running(), checkpoint_step=36)
    waiting = dataclasses.replace(before, waiting=line)
    assert waiting.line().startswith("running/waiting for workers | step 40/120") and "ETA" not in waiting.line()
    assert events(before, waiting) == [line] and events(waiting, waiting) == []
    assert events(waiting, before) == ["the cluster placed the workers: training goes on"]
