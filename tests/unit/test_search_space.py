"""The `img2img tune --search` grammar and its checks against a variant, as tables of inputs."""

from __future__ import annotations

import pytest

from cluster.errors import Img2ImgError
from jobs.search.space import check_space, parse_dimension, parse_space
from jobs.search.spec import SearchSpec, check_search_options
from jobs.training.spec import TrainSpec


@pytest.mark.parametrize("text, key, kind, values", [
    ("lr=loguniform(1e-4,3e-3)", "lr", "loguniform", (1e-4, 3e-3)),
    (" lr = loguniform( 1e-4 , 3e-3 ) ", "lr", "loguniform", (1e-4, 3e-3)),
    ("decay_start=uniform(0.2,0.8)", "decay_start", "uniform", (0.2, 0.8)),
    ("nf=randint(8,32)", "nf", "randint", (8, 32)),
    ("nf=choice(16,32)", "nf", "choice", (16, 32)),
    ("nf=choice(16)", "nf", "choice", (16,)),
    ("augment=choice(hflip,d4)", "augment", "choice", ("hflip", "d4")),
    ("lr=grid(2e-3,1e-3,1e-7)", "lr", "grid", (2e-3, 1e-3, 1e-7)),
    ("ema_decay=choice(0,0.999)", "ema_decay", "choice", (0, 0.999)),
])
def test_parse_dimension(text, key, kind, values):
    d = parse_dimension(text)
    assert (d.key, d.kind, d.values) == (key, kind, values)


@pytest.mark.parametrize("text, message", [
    ("lr", "expected KEY=DIST(ARGS)"),
    ("lr=1e-3", "expected KEY=DIST(ARGS)"),
    ("=choice(1,2)", "expected KEY=DIST(ARGS)"),
    ("lr=loguniform(1e-4,3e-3", "expected KEY=DIST(ARGS)"),
    ("lr=normal(0,1)", "unknown distribution 'normal'"),
    ("lr=loguniform(1e-3)", "takes two numbers"),
    ("lr=loguniform(1e-4,2e-4,3e-4)", "takes two numbers"),
    ("lr=loguniform(a,b)", "takes two numbers"),
    ("lr=loguniform(3e-3,1e-4)", "empty range"),
    ("lr=uniform(1e-3,1e-3)", "empty range"),
    ("lr=loguniform(0,1e-3)", "loguniform needs low > 0"),
    ("lr=loguniform(-1,1e-3)", "loguniform needs low > 0"),
    ("lr=uniform(0,inf)", "finite"),
    ("lr=uniform(nan,1)", "finite"),
    ("nf=randint(8.5,32)", "randint takes two integers"),
    ("nf=randint(32,8)", "empty range"),
    ("nf=choice()", "needs at least one value"),
    ("nf=grid()", "needs at least one value"),
    ("nf=choice(16,,32)", "empty value between commas"),
    ("nf=choice(16,16)", "listed twice"),
])
def test_parse_dimension_refuses(text, message):
    with pytest.raises(Img2ImgError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_dimension(text)


def test_parse_space_needs_one_and_refuses_a_key_twice():
    with pytest.raises(Img2ImgError, match="at least one --search"):
        parse_space([])
    with pytest.raises(Img2ImgError, match="'lr' is searched twice"):
        parse_space(["lr=choice(1e-3)", "lr=loguniform(1e-4,1e-3)"])


def _spec(**kw) -> TrainSpec:
    return TrainSpec(dataset="photos", variant="autoencoder", **kw)


@pytest.mark.parametrize("text, spec_kw", [
    ("lr=loguniform(1e-4,3e-3)", {}),
    ("nf=choice(8,16)", {}),
    ("nf=randint(8,16)", {}),
    ("augment=choice(hflip,d4)", {}),
    ("ema_decay=choice(0,0.999)", {}),
    ("decay_start=uniform(0.1,0.9)", {"config": {"lr_policy": "linear"}}),
    ("lr=grid(1e-3,1e-7)", {"config": {"nf": "16"}}),
])
def test_check_space_accepts(text, spec_kw):
    check_space(parse_space([text]), _spec(**spec_kw))


@pytest.mark.parametrize("text, spec_kw, message", [
    ("width=choice(16,32)", {}, "autoencoder has no setting 'width'"),
    ("nf=choice(16,-1)", {}, "nf=-1 is refused"),
    ("nf=choice(16,sixteen)", {}, "nf=sixteen is refused: nf must be int"),
    ("augment=choice(hflip,d8)", {}, "augment=d8 is refused: augment must be one of"),
    ("ema_decay=choice(0,1)", {}, "ema_decay=1 is refused"),
    ("ema_decay=uniform(0.5,1.5)", {}, "ema_decay=1.5 is refused"),
    ("lr=uniform(-1,1)", {}, "lr=-1.0 is refused: lr must be > 0"),
    ("decay_start=uniform(0.5,1.0)", {}, "decay_start=1.0 is refused"),
    ("nf=uniform(8,16)", {}, "nf is a int, uniform draws floats"),
    ("lr=randint(1,3)", {}, "lr is a float, randint draws integers"),
    ("augment=uniform(0,1)", {}, "augment is a str, uniform draws floats"),
    ("nf=choice(8,16)", {"config": {"nf": "32"}}, "also fixed by --set nf=32"),
    ("lr=loguniform(1e-4,1e-3)", {"lr": 1e-3}, "also fixed by --lr"),
    ("batch_size=choice(4,8)", {"batch_size": 4}, "also fixed by --batch-size"),
    ("image_size=choice(4,64)", {}, "image_size=4 is refused"),
])
def test_check_space_refuses(text, spec_kw, message):
    with pytest.raises(Img2ImgError) as e:
        check_space(parse_space([text]), _spec(**spec_kw))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, message", [
    ({"trials": 0}, "--trials must be at least 1"),
    ({"scheduler": "pbt"}, "--scheduler must be one of asha, fifo"),
    ({"max_concurrent": 0}, "--max-concurrent must be at least 1"),
    ({"grace_steps": 0}, "--grace-steps must be at least 1"),
    ({"reduction_factor": 1}, "--reduction-factor must be at least 2"),
])
def test_search_options_refused(kw, message):
    args = {"trials": 4, "scheduler": "asha", "max_concurrent": 1, **kw}
    with pytest.raises(Img2ImgError, match=message):
        check_search_options(**args)


def test_trial_spec_sets_the_trial_values_over_the_common_ones():
    search = SearchSpec(base={"dataset": "photos", "variant": "autoencoder", "config": {"nf": "16"}},
                        space=["lr=loguniform(1e-4,1e-3)"])
    search.validate()
    trial = search.trial_spec({"lr": 5e-4}, run_id="abc")
    assert trial.config == {"nf": "16", "lr": 5e-4} and trial.run_id == "abc"
    assert trial.variant_config().lr == 5e-4 and trial.variant_config().nf == 16
    assert SearchSpec.from_json(search.to_json()) == search


@pytest.mark.parametrize("args, message", [
    (["--search", "width=choice(16,32)"], "autoencoder has no setting 'width'"),
    (["--search", "lr=loguniform(3e-3,1e-4)"], "empty range"),
    (["--search", "lr=normal(0,1)"], "unknown distribution"),
    ([], "at least one --search"),
    (["--search", "lr=choice(1e-3)", "--trials", "0"], "--trials must be at least 1"),
    (["--search", "lr=choice(1e-3)", "--scheduler", "pbt"], "--scheduler must be one of"),
])
def test_tune_cli_refuses_before_any_service(cli, args, message):
    """No stack runs here: each refusal comes before anything is contacted."""
    result = cli("tune", "--dataset", "photos", "--variant", "autoencoder", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("last_step, total, error, expected", [
    (24, 24, False, "finished"),
    (6, 24, False, "stopped early"),
    (6, 24, True, "failed"),
    (24, 24, True, "failed"),
])
def test_trial_outcome(last_step, total, error, expected):
    from jobs.search.trials import outcome

    assert outcome(last_step, total, error) == expected


def test_best_row_is_the_best_report_with_a_checkpoint():
    """Tune's per-trial history (`Result.metrics_dataframe`): reports without a checkpoint or
    without a val PSNR cannot be registered, the best of the others is."""
    from types import SimpleNamespace

    import pandas as pd

    from jobs.search.driver import best_row

    df = pd.DataFrame({"step": [6, 12, 18, 24], "val_psnr": [20.0, 25.0, float("nan"), 23.0],
                       "checkpoint_path": ["b/c/1", None, "b/c/3", "b/c/4"]})
    best = best_row(SimpleNamespace(metrics_dataframe=df))
    assert best == {"step": 24, "val_psnr": 23.0, "checkpoint_path": "b/c/4"}
    assert best_row(SimpleNamespace(metrics_dataframe=df.assign(checkpoint_path=None))) is None
    assert best_row(SimpleNamespace(metrics_dataframe=None)) is None


def test_trials_table_ranks_best_first():
    from rich.console import Console

    from img2img_cli.commands.tune import trials_table

    rows = [{"trial": "t0", "params": {"lr": 1e-7}, "status": "stopped early", "step": 6, "val_psnr": 10.0,
             "best_val_psnr": 10.0, "samples_per_s": 3.0},
            {"trial": "t1", "params": {"lr": 3e-3}, "status": "finished", "step": 24, "val_psnr": 20.5,
             "best_val_psnr": 21.25, "samples_per_s": 3.5},
            {"trial": "t2", "params": {"lr": 1e-3}, "status": "RUNNING", "step": 0, "val_psnr": None,
             "best_val_psnr": None, "samples_per_s": None}]
    console = Console(width=200, record=True)
    console.print(trials_table(rows))
    text = console.export_text()
    assert text.index("t1") < text.index("t0") < text.index("t2")
    assert "lr=0.003" in text and "21.25" in text and "stopped early" in text
