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
    ("nf=choice(16,0)", {}, "nf=0 is refused: autoencoder cannot be built"),
    ("nf=randint(0,16)", {}, "nf=0 is refused: autoencoder cannot be built"),
    ("image_size=choice(64,72)", {}, "image_size=72 is refused: autoencoder cannot train on 72 px crops"),
    ("loss=choice(l2,l3)", {}, "loss=l3 is refused"),
])
def test_check_space_refuses(text, spec_kw, message):
    with pytest.raises(Img2ImgError) as e:
        check_space(parse_space([text]), _spec(**spec_kw))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("variant, space, message", [
    # trains only at a training step (the dry run on the meta device), not at the Config's checks
    ("pix2pix", ["gan_mode=choice(lsgan,bogus)"], "gan_mode=bogus is refused: pix2pix cannot train"),
    ("dualgan", ["n_critic=choice(1,0)", "netG=choice(unet_32)"], "n_critic=0 is refused"),
    # each value trains alone, not together: a 5-layer PatchGAN has nothing left of 32 px crops
    ("cyclegan", ["n_layers_D=choice(3,5)", "image_size=choice(256,32)"],
     "the trial n_layers_D=5, image_size=32 is refused"),
])
def test_check_space_tries_every_trial_on_the_meta_device(variant, space, message):
    with pytest.raises(Img2ImgError) as e:
        check_space(parse_space(space), TrainSpec(dataset="photos", variant=variant))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_combinations_of_the_candidates():
    from jobs.search.space import combinations

    dims = parse_space(["nf=choice(8,16)", "lr=loguniform(1e-4,1e-3)"])
    assert combinations(dims) == [{"nf": 8, "lr": 1e-4}, {"nf": 8, "lr": 1e-3}, {"nf": 16, "lr": 1e-4},
                                  {"nf": 16, "lr": 1e-3}]
    assert combinations(dims, limit=3) == [{"nf": 8, "lr": 1e-4}, {"nf": 16, "lr": 1e-4}, {"nf": 8, "lr": 1e-4},
                                           {"nf": 8, "lr": 1e-3}]


def test_a_fixed_value_the_variant_refuses_is_refused_before_the_space():
    search = SearchSpec(base={"dataset": "photos", "variant": "autoencoder", "config": {"nf": "0"}},
                        space=["lr=loguniform(1e-4,1e-3)"])
    with pytest.raises(Img2ImgError, match="autoencoder cannot be built with these settings"):
        search.validate()


@pytest.mark.parametrize("kw, message", [
    ({"trials": 0}, "--trials must be at least 1"),
    ({"scheduler": "sgd"}, "--scheduler must be one of asha, pbt, fifo"),
    ({"perturbation_interval": 0}, "--perturbation-interval must be at least 1 step"),
    ({"time_budget_s": 0}, "--time-budget must be a positive duration"),
    ({"time_budget_s": float("inf")}, "--time-budget must be a positive duration"),
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
    (["--search", "lr=choice(1e-3)", "--scheduler", "sgd"], "--scheduler must be one of"),
    (["--search", "lr=choice(1e-3)", "--set", "nf=0"], "autoencoder cannot be built with these settings"),
    (["--search", "nf=choice(16,0)"], "nf=0 is refused"),
    (["--search", "lr=choice(1e-3)", "--time-budget", "1x"], "--time-budget '1x' is not a duration"),
    (["--search", "lr=choice(1e-3)", "--time-budget", "0m"], "--time-budget must be a positive duration"),
    (["--search", "lr=choice(1e-3)", "--perturbation-interval", "0"], "--perturbation-interval must be at least 1"),
    (["--search", "lr=choice(1e-3,2e-3)", "--scheduler", "pbt"], "--scheduler pbt evolves a population"),
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


@pytest.mark.parametrize("current, trial_outcome, expected", [
    ("RUNNING", "stopped early", "KILLED"),  # Tune stopped it: its run never ended
    ("FAILED", "stopped early", "KILLED"),  # the stop reached its training as an error
    ("RUNNING", "failed", "FAILED"),
    ("FAILED", "failed", None),
    ("FINISHED", "finished", None),
    ("KILLED", "stopped early", None),
])
def test_a_trial_stopped_early_ends_its_run_killed_however_the_stop_reached_it(current, trial_outcome, expected):
    from jobs.search.trials import run_status

    assert run_status(current, trial_outcome) == expected


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


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0),
                                           ("1.5h", 5400.0), (" 2M ", 120.0), (None, None), (45.0, 45.0)])
def test_search_time_budget(text, seconds):
    from jobs.search.spec import parse_budget

    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text, message", [("1x", "is not a duration"), ("h", "is not a duration"),
                                           ("-5m", "is not a duration"), ("0", "must be a positive duration"),
                                           ("0h", "must be a positive duration"), ("1e999", "is not a duration")])
def test_search_time_budget_refused(text, message):
    from jobs.search.spec import parse_budget

    with pytest.raises(Img2ImgError, match=message):
        parse_budget(text)


def _pbt(space, **kw) -> SearchSpec:
    base = {"dataset": "photos", "variant": "autoencoder", "config": {"nf": "16"}, "max_steps": 24}
    return SearchSpec(base=base, space=space, scheduler="pbt", **{"trials": 2, "max_concurrent": 2, **kw})


@pytest.mark.parametrize("space, kw, message", [
    (["lr=loguniform(1e-4,1e-2)"], {"max_concurrent": 1}, "needs at least 2 trials and --max-concurrent at least "
                                                          "their number (2), got --max-concurrent 1"),
    (["lr=loguniform(1e-4,1e-2)"], {"trials": 1, "max_concurrent": 1}, "needs at least 2 trials"),
    (["lr=grid(1e-3,2e-3)"], {"max_concurrent": 3}, "their number (4)"),
    (["beta1=uniform(0.5,0.9)", "image_size=choice(32,64)"], {}, None),
])
def test_pbt_needs_the_whole_population_at_once(space, kw, message):
    search = _pbt(space, **kw)
    if message is None:
        search.validate()
        return
    with pytest.raises(Img2ImgError) as e:
        search.validate()
    assert message in str(e.value)


def test_pbt_refuses_a_key_that_changes_the_networks():
    search = SearchSpec(base={"dataset": "photos", "variant": "autoencoder", "max_steps": 24},
                        space=["lr=loguniform(1e-4,1e-2)", "nf=choice(8,16)"], scheduler="pbt", trials=2,
                        max_concurrent=2)
    with pytest.raises(Img2ImgError, match="nf changes the networks .* search it with --scheduler asha or fifo"):
        search.validate()


def test_pbt_scheduler_mutates_the_searched_keys_within_their_ranges():
    """Tune's own explore step (`ray.tune.schedulers.pbt._explore`, what PBT runs when it clones
    a trial) with the search's mutations and clipping: every value stays in the space that was
    checked before submission, of its type; the keys that were not searched are untouched."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from jobs.search import pbt

    search = _pbt(["lr=loguniform(1e-4,1e-2)", "ema_decay=uniform(0.9,0.999)", "batch_size=randint(4,8)",
                   "augment=choice(hflip,d4)", "beta1=grid(0.5,0.9)"], max_concurrent=4)
    search.validate()
    scheduler = pbt.scheduler(search, total_steps=24)
    assert scheduler._perturbation_interval == 6 and scheduler._time_attr == "step"
    mutations = scheduler._hyperparam_mutations
    assert set(mutations) == {"lr", "ema_decay", "batch_size", "augment", "beta1"}
    assert mutations["augment"] == ["hflip", "d4"] and mutations["beta1"] == [0.5, 0.9]
    random.seed(0)
    config = {"lr": 1e-2, "ema_decay": 0.999, "batch_size": 8, "augment": "d4", "beta1": 0.9, "other": 1}
    seen = set()
    for _ in range(200):
        new, _ = _explore(config, mutations, scheduler._resample_probability, (1.2, 0.8),
                          scheduler._custom_explore_fn)
        assert 1e-4 <= new["lr"] <= 1e-2 and 0.9 <= new["ema_decay"] <= 0.999
        assert isinstance(new["batch_size"], int) and 4 <= new["batch_size"] <= 8
        assert new["augment"] in ("hflip", "d4") and new["beta1"] in (0.5, 0.9) and new["other"] == 1
        seen.add(new["lr"])
        config = new
    assert len(seen) > 10  # it does explore
    assert _pbt(["lr=loguniform(1e-4,1e-2)"], perturbation_interval=5).dims()  # an explicit interval is kept
    assert pbt.scheduler(_pbt(["lr=loguniform(1e-4,1e-2)"], perturbation_interval=5), 24)._perturbation_interval == 5


def test_pbt_trials_keep_every_checkpoint():
    """A clone starts from the donor's latest checkpoint, which need not be among its best."""
    assert _pbt(["lr=loguniform(1e-4,1e-2)"]).trial_spec({"lr": 1e-3}).keep_checkpoints is None
    asha = SearchSpec(base={"dataset": "photos"}, space=["lr=loguniform(1e-4,1e-2)"])
    assert asha.trial_spec({"lr": 1e-3}).keep_checkpoints == 2


def test_the_trials_plot_draws_each_trial_against_time():
    """From Tune's per-trial history (`Result.metrics_dataframe`): time is counted from the
    search's first report, NaN reports are left out, each curve keeps its trial's outcome."""
    import io
    from types import SimpleNamespace

    import pandas as pd
    from PIL import Image

    from jobs.search.plot import series, trials_png

    grid = [SimpleNamespace(metrics_dataframe=pd.DataFrame({"timestamp": [100, 110, 120], "trial_id": "a_00000",
                                                            "val_psnr": [20.0, float("nan"), 22.5]}), path="p0"),
            SimpleNamespace(metrics_dataframe=pd.DataFrame({"timestamp": [130], "trial_id": "a_00001",
                                                            "val_psnr": [12.0]}), path="p1"),
            SimpleNamespace(metrics_dataframe=None, path="p2")]
    rows = [{"trial": "a_00000", "status": "finished"}, {"trial": "a_00001", "status": "stopped early"}]
    curves = series(grid, rows)
    assert curves == [{"trial": "a_00000", "status": "finished", "t": [0.0, 20.0], "psnr": [20.0, 22.5]},
                      {"trial": "a_00001", "status": "stopped early", "t": [30.0], "psnr": [12.0]}]
    image = Image.open(io.BytesIO(trials_png(curves, "search x")))
    assert image.format == "PNG" and image.size == (800, 450)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20  # lines, labels, legend: not a blank canvas
    Image.open(io.BytesIO(trials_png([]))).verify()  # no trial reported: still a plot


def test_a_setting_that_may_be_unset_is_searched_as_its_type():
    """nafnet's `lr: float | None` (None: its preset's) takes a float range like any float."""
    check_space(parse_space(["lr=loguniform(5e-4,4e-3)", "width=randint(8,16)"]),
                TrainSpec(dataset="photos", variant="nafnet"))
    with pytest.raises(Img2ImgError, match="width is a int, uniform draws floats"):
        check_space(parse_space(["width=uniform(8,16)"]), TrainSpec(dataset="photos", variant="nafnet"))


def test_pbt_never_perturbs_a_trial_at_its_last_step():
    """A trial's report at the last step is not a perturbation point (a clone of a donor's final
    checkpoint would have no step left to train); the same report one interval earlier is."""
    from ray.tune.experiment import Trial

    from jobs.search import pbt

    scheduler = pbt.scheduler(_pbt(["lr=loguniform(1e-4,1e-2)"], perturbation_interval=6), total_steps=24)
    scheduler.set_search_properties(metric="val_psnr", mode="max", config={})
    trial = Trial("img2img-trial", config={"lr": 1e-3}, stub=True)
    from ray.tune.schedulers.pbt import _PBTTrialState

    class Controller:  # what PBT asks of Tune's controller for a population of one
        def get_trials(self):
            return [trial]

    scheduler._trial_state[trial] = state = _PBTTrialState(trial)
    trial.set_status(Trial.RUNNING)
    assert scheduler.on_trial_result(Controller(), trial, {"step": 18, "val_psnr": 20.0}) == scheduler.CONTINUE
    assert state.last_perturbation_time == 18 and state.last_score == 20.0  # a perturbation point
    assert scheduler.on_trial_result(Controller(), trial, {"step": 24, "val_psnr": 21.0}) == scheduler.CONTINUE
    assert state.last_perturbation_time == 18 and state.last_score == 20.0  # the last step is not
