"""The rows/workers/batch arithmetic of a training request (jobs.training.plan): what any dataset size
trains, and the one-line refusals of what cannot run."""

import pytest

from cluster.errors import Img2ImgError
from jobs.training.plan import DEFAULT_CADENCE_S, MIN_STEPS_PER_EPOCH, Cadence, make_plan


def test_the_issue_case_13_rows_2_workers_batch_16_trains_300_steps():
    plan = make_plan({"train": 13}, workers=2, batch_size=16, epochs=10, max_steps=300, val_rows=3)
    assert plan.rows_per_worker == {"train": 6}
    assert plan.steps_per_epoch == MIN_STEPS_PER_EPOCH
    assert plan.total_steps == min(300, 10 * MIN_STEPS_PER_EPOCH)  # whichever comes first
    assert plan.repeats["train"] == -(-MIN_STEPS_PER_EPOCH * 16 // 6)  # ceil: rows repeat within the epoch
    assert any("repeats" in note for note in plan.notes())


@pytest.mark.parametrize("rows", [1, 3, 13])
def test_tiny_sets_train_every_step_they_promise(rows):
    plan = make_plan({"train": rows}, workers=1, batch_size=8, epochs=2, max_steps=None, val_rows=1)
    assert plan.total_steps == 2 * plan.steps_per_epoch >= 2 * MIN_STEPS_PER_EPOCH
    assert plan.epochs == 2


def test_max_steps_and_epochs_stop_at_whichever_comes_first():
    big = make_plan({"train": 6400}, workers=2, batch_size=16, epochs=10, max_steps=40, val_rows=10)
    assert big.steps_per_epoch == 200 and big.total_steps == 40 and big.epochs == 1
    assert big.stop_reason == "max-steps"
    small = make_plan({"train": 6400}, workers=2, batch_size=16, epochs=1, max_steps=1000, val_rows=10)
    assert small.total_steps == 200 and small.stop_reason == "epochs"


def test_large_set_needs_no_repeat():
    plan = make_plan({"train": 1000}, workers=2, batch_size=16, epochs=1, max_steps=None, val_rows=10)
    assert plan.steps_per_epoch == 31  # 500 rows per worker // 16; the 4 left over start the next epoch
    assert plan.repeats["train"] == 1 and plan.notes() == []


def test_unpaired_epoch_is_a_pass_over_the_larger_domain():
    plan = make_plan({"train_a": 3, "train_b": 40}, workers=1, batch_size=2, epochs=1, max_steps=None, val_rows=1)
    assert plan.steps_per_epoch == 20
    assert plan.repeats == {"train_a": 14, "train_b": 1}


@pytest.mark.parametrize("rows, workers, message", [
    ({"train": 1}, 2, "has 1 training rows but --workers 2 needs at least one per worker; use --workers 1"),
    ({"train_a": 3, "train_b": 40}, 4, "3 training images in domain A but --workers 4"),
    ({"train": 0}, 1, "has 0 training rows"),
])
def test_fewer_rows_than_workers_is_refused_with_the_numbers_and_the_fix(rows, workers, message):
    with pytest.raises(Img2ImgError, match=message.replace("(", r"\(")):
        make_plan(rows, workers=workers, batch_size=4, epochs=1, max_steps=None, val_rows=5, dataset="dataset 'x'")


def test_no_validation_rows_is_refused():
    with pytest.raises(Img2ImgError, match="no validation rows.*--val-fraction"):
        make_plan({"train": 10}, workers=1, batch_size=4, epochs=1, max_steps=None, val_rows=0)


def test_each_val_row_is_scored_by_exactly_one_worker_the_same_in_every_process():
    """Validation numbers stand for the version's evaluation: no row dropped (3 rows, 2 workers
    scores 3), none twice, and every worker process (its own PYTHONHASHSEED) agrees on the owner."""
    import subprocess
    import sys

    from jobs.training.worker import val_owner

    keys = [f"photo{i}.png#{j}" for i in range(3) for j in range(2)][:3]
    for world in (1, 2, 3, 4):
        owned = [[k for k in keys if val_owner(k, world) == rank] for rank in range(world)]
        assert sorted(k for part in owned for k in part) == sorted(keys)
    code = f"from jobs.training.worker import val_owner; print([val_owner(k, 2) for k in {keys!r}])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other == str([val_owner(k, 2) for k in keys])


@pytest.mark.parametrize("text, expected", [
    ("200", Cadence(steps=200)), ("30s", Cadence(seconds=30)), ("5m", Cadence(seconds=300)),
    ("1h", Cadence(seconds=3600)), ("epoch", Cadence(epoch=True)), ("auto", Cadence(seconds=DEFAULT_CADENCE_S)),
    (None, Cadence(seconds=DEFAULT_CADENCE_S)),
])
def test_cadence_parses(text, expected):
    assert Cadence.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "5x", "-3", "often", "0m"])
def test_bad_cadence_is_one_line_error(text):
    with pytest.raises(Img2ImgError, match="--checkpoint-every"):
        Cadence.parse(text)


@pytest.mark.parametrize("rows, workers, shards, reads", [
    (200, 2, 1, 11),  # a small split: each pass reads it 11 times, 1100 rows a worker
    (200, 2, 4, 11),
    (3, 1, 1, 64),  # capped: 64 shard reads a pass at most (192 rows a pass, not 3)
    (40, 2, 8, 8),  # capped by the shards: 8 x 8 = 64 reads
    (2048, 2, 1, 1),  # large enough already
    (50_000, 4, 200, 1),
    (0, 1, 1, 64),  # never a division by zero (an empty split is refused before training)
])
def test_a_small_split_makes_fewer_longer_passes(rows, workers, shards, reads):
    from jobs.training.driver import MAX_SHARD_READS, PASS_ROWS_PER_WORKER, reads_per_pass

    assert reads_per_pass(rows, workers, shards) == reads
    assert reads == 1 or shards * reads <= MAX_SHARD_READS
    if rows and shards * reads < MAX_SHARD_READS:
        assert rows * reads >= PASS_ROWS_PER_WORKER * workers  # every worker gets a full pass's rows
        assert rows * (reads - 1) < PASS_ROWS_PER_WORKER * workers or reads == 1  # no more than needed



@pytest.mark.parametrize("rows, workers, job_rows, reads", [
    (12, 2, 32, 3),  # 4 steps x batch 4 x 2 workers: 3 reads of 12 rows hold all 32
    (12, 2, 12, 1),
    (12, 2, 10**9, 64),  # a long job: the pass-size rule alone
    (200, 2, None, 11),  # time budget only: unbounded
])
def test_a_short_job_never_reads_more_rows_a_pass_than_it_trains_on(rows, workers, job_rows, reads):
    from jobs.training.driver import reads_per_pass

    assert reads_per_pass(rows, workers, 1, job_rows) == reads