"""A limit the user typed is never cut by a default they did not type (jobs.training.plan.make_plan):
every limit given counts and the first reached ends the run; the default 10 epochs applies only
when no limit at all is given. The plan line says what ends the run."""

import pytest

from jobs.training.plan import DEFAULT_EPOCHS, UNLIMITED_STEPS, make_plan
from jobs.training.spec import TrainSpec

ROWS, WORKERS, BATCH = {"train": 6400}, 2, 16  # 200 steps per epoch


@pytest.mark.parametrize("epochs,max_steps,budget,total,ends_by,says", [
    (None, None, None, DEFAULT_EPOCHS * 200, "epochs", ["2000 steps (the default 10 epochs)"]),
    (None, 400, None, 400, "max-steps", ["400 steps (--max-steps)", "no epoch limit"]),
    (None, 4000, None, 4000, "max-steps", ["4000 steps (--max-steps)"]),  # past the default 10 epochs
    (None, None, 150, UNLIMITED_STEPS, "", ["150 s of training (--time-budget)", "no epoch limit"]),
    (3, None, None, 600, "epochs", ["600 steps (3 epochs)"]),
    (3, 4000, None, 600, "epochs", ["600 steps (3 epochs, before --max-steps)"]),
    (30, 400, None, 400, "max-steps", ["400 steps (--max-steps, before --epochs ends it)"]),
    (None, 400, 150, 400, "max-steps", ["400 steps (--max-steps) or 150 s", "whichever comes first",
                                        "no epoch limit"]),
    (3, None, 150, 600, "epochs", ["600 steps (3 epochs) or 150 s of training", "whichever comes first"]),
])
def test_typed_limits_end_the_run_first_reached_first(epochs, max_steps, budget, total, ends_by, says):
    plan = make_plan(ROWS, WORKERS, BATCH, epochs, max_steps, val_rows=10, time_budget_s=budget)
    assert plan.steps_per_epoch == 200
    assert plan.total_steps == total and plan.ends_by == ends_by
    assert plan.bounded == (total < UNLIMITED_STEPS)
    for part in says:
        assert part in plan.describe(), (part, plan.describe())
    if epochs is None and (max_steps or budget):
        assert "epochs" not in plan.limits  # no default epoch count stands beside a typed limit


def test_the_reported_cases_train_what_was_typed():
    """`--max-steps 400` on a small set ran 80 steps (8 per epoch x the default 10 epochs)."""
    small = make_plan({"train": 13}, 2, 16, None, 400, val_rows=3)
    assert small.steps_per_epoch == 8 and small.total_steps == 400
    # `--time-budget 150` ended at the default 10 epochs' step count first
    budget = make_plan({"train": 13}, 2, 16, None, None, val_rows=3, time_budget_s=150)
    assert not budget.bounded and budget.limits == ("time-budget",)


def test_a_request_leaves_epochs_unset_unless_typed():
    assert TrainSpec(dataset="d").epochs is None
    TrainSpec(dataset="d", time_budget_s=150).validate()  # no epoch count needed


# Every address points at a closed port: the stack is DOWN. A bad option must still be named
# (not "cannot reach ..."), before torch, MLflow or Ray is even imported, let alone contacted.
DOWN = {"IMG2IMG_RAY_ADDRESS": "http://127.0.0.1:9", "IMG2IMG_MLFLOW_URI": "http://127.0.0.1:9",
        "IMG2IMG_S3_ENDPOINT": "127.0.0.1:9", "IMG2IMG_STATE_DIR": "/nonexistent/img2img-state"}
PROBE = ("import atexit, runpy, sys\n"
         "atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules), "
         "file=sys.__stdout__))\n"
         "sys.argv = ['img2img', *sys.argv[1:]]\n"
         "runpy.run_module('img2img_cli', run_name='__main__')\n")


@pytest.mark.parametrize("argv,message", [
    (["train", "--dataset", "x", "--time-budget", "-5"], "--time-budget must be a positive number"),
    (["train", "--dataset", "x", "--max-steps", "0"], "--epochs and --max-steps must be at least 1"),
    (["train", "--dataset", "x", "--workers", "0", "--init-from", "m@champion"], "--workers must be at least 1"),
    (["train", "--dataset", "x", "--checkpoint-every", "5x", "--resume", "abc"], "is not a cadence"),
    (["eval", "m/1", "--dataset", "x", "--limit", "0"], "--limit must be at least 1"),
    (["models", "promote", "m", "--best", "--metric", "lpips"], "--metric must be psnr, ssim or gain_db"),
])
def test_bad_options_are_refused_before_any_service_or_heavy_import(argv, message):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, **DOWN, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=300,
                       cwd=root)
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert len(errors) == 1 and errors[0].startswith("Error:") and message in errors[0], r.stderr
    assert "HEAVY []" in r.stdout, r.stdout  # nothing that would reach a service was loaded


@pytest.mark.parametrize("given,bounds", [((1, None), (1, 2)), ((3, None), (3, 3)), ((1, 5), (1, 5)), ((2, 2), (2, 2))])
def test_serve_replica_bounds_a_typed_lower_bound_is_not_cut_by_the_default_upper_one(given, bounds):
    from serving.options import Scaling

    scaling = Scaling(min_replicas=given[0], max_replicas=given[1])
    assert (scaling.min_replicas, scaling.max_replicas) == bounds


@pytest.mark.parametrize("given", [(0, None), (3, 2), (1, 0)])
def test_serve_replica_bounds_typed_contradictions_are_refused(given):
    from cluster.errors import Img2ImgError
    from serving.options import Scaling

    with pytest.raises(Img2ImgError, match="--min-replicas"):
        Scaling(min_replicas=given[0], max_replicas=given[1])
