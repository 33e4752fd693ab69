"""Time-budgeted runs (`--time-budget`, the demo, the quality benchmark) anneal their LR to the
budget's end instead of to an epoch count they never reach."""

from jobs.train_loop import budget_total_steps
from translator.variants.base import lr_factor


def test_aims_at_the_step_where_the_budget_runs_out():
    # 10 steps took 5 s; 20 s are left -> 40 more steps at this pace.
    assert budget_total_steps(step=100, epoch_steps=10, epoch_secs=5.0, secs_left=20.0, planned=10_000) == 140


def test_never_beyond_the_planned_steps_and_always_ahead_of_now():
    assert budget_total_steps(100, 10, 5.0, 1e6, planned=500) == 500
    assert budget_total_steps(100, 10, 5.0, -3.0, planned=500) == 101  # budget already spent
    assert budget_total_steps(100, 0, 0.0, 20.0, planned=500) == 500  # an empty epoch: keep the plan


def test_cosine_reaches_the_floor_when_the_budget_ends():
    """Simulate a 60 s budget at 0.5 s/step in 10-step epochs, re-aiming after each epoch."""
    step, clock, budget, total, factors = 0, 0.0, 60.0, 1_000_000, []
    while clock < budget:
        for _ in range(10):
            factors.append(lr_factor("cosine", step, total, 0.5))
            step, clock = step + 1, clock + 0.5
        total = budget_total_steps(step, 10, 5.0, budget - clock, 1_000_000)
    assert factors[0] == 1.0
    assert factors[len(factors) // 2] < 0.9  # decaying well before the end
    assert factors[-1] < 0.05  # and near zero at the end, not stuck near the peak
