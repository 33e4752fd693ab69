"""The live progress line and its event lines (jobs.progress), from snapshots of a run."""

import io

from jobs.progress import Snapshot, events, strip_ansi, write_raw


def test_line_shows_step_epoch_loss_val_gain_rate_elapsed_eta():
    snap = Snapshot(status="RUNNING", phase="training", step=40, total_steps=120, epoch=5.0, loss=0.03125,
                    val_psnr=27.1, val_gain_db=1.42, samples_per_s=12.34, elapsed_s=75, eta_s=3725)
    assert snap.line() == ("running/training | step 40/120 (33%) | epoch 5.0 | loss 0.0312 | "
                           "val PSNR 27.10 dB (+1.42 dB vs input) | 12.3 samples/s | elapsed 1:15 | ETA 1:02:05")


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
