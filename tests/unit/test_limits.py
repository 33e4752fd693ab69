"""A limit the user typed is never cut by a default they did not type (jobs.plan.make_plan):
every limit given counts and the first reached ends the run; the default 10 epochs applies only
when no limit at all is given. The plan line says what ends the run."""

import pytest

from jobs.plan import DEFAULT_EPOCHS, UNLIMITED_STEPS, make_plan
from jobs.spec import TrainSpec

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
