"""Which task a degradation spec trains for (GET /model and the web page show it), and the
demo's `--task` choices."""

import numpy as np
import pytest

from img2img_demo.tasks import DEFAULT_TASK, DEMO_TASKS, demo_task
from translator import degrade
from translator.tasks import TASKS, task_for_spec


@pytest.mark.parametrize("spec, task", [
    ("gaussian:1.5", "deblur"),
    ("random_gaussian:0.5-3", "deblur"),
    ("mix(gaussian:1.5,resize:4)", "deblur"),
    ("noise:10", "restore"),
    ("jpeg:30", "restore"),
    ("chain(gaussian:1,noise:5,jpeg:40)", "restore"),  # blur among other damage: restoration
    ("holes:0.2", "restore"),
    ("scratches:12", "restore"),
    ("mix(holes:0.1,scratches:8)", "restore"),
    ("second_order", "restore"),
    ("mix(second_order,random_gaussian:0.5-3)", "restore"),
    ("gray", "colorize"),
    ("chain(gray,scratches:8)", "colorize+restore"),  # an old damaged black-and-white print
    ("edges", "sketch"),
    ("edges:2", "sketch"),
    ("chain(gaussian:1,edges)", "sketch"),  # a drawing keeps nothing else to undo
    (" mix( gray , gray ) ", "colorize"),
])
def test_spec_names_its_task(spec, task):
    assert task_for_spec(spec) == task


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_no_spec_no_task(spec):
    assert task_for_spec(spec) is None  # a dataset the user brought as pairs: nothing to derive


@pytest.mark.parametrize("spec", ["watercolour:3", "mix(gaussian:1.5", "gaussian:-1"])
def test_unknown_spec_is_shown_as_it_is(spec):
    assert task_for_spec(spec) == spec  # never raises: GET /model must answer whatever a tag holds


def test_every_demo_task_trains_what_its_spec_names():
    assert set(DEMO_TASKS) == set(TASKS) and DEFAULT_TASK == "deblur"
    for name, task in DEMO_TASKS.items():
        assert task_for_spec(task.spec) == name and task_for_spec(task.quick_spec) == name
        # the spec changes a colour photo (else the demo would have nothing to score)
        photo = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
        assert not np.array_equal(degrade.apply(task.quick_spec, photo, seed=0), photo)


def test_demo_names_never_collide_and_deblur_keeps_its_own():
    names = [t.dataset(q) for t in DEMO_TASKS.values() for q in (False, True)]
    assert len(set(names)) == len(names)
    assert demo_task("deblur").dataset(False) == "demo-photos" and demo_task("deblur").dataset(True) == "demo-photos-quick"
    assert {demo_task("colorize").variant, demo_task("sketch").variant} == {"pix2pix"}
    assert {demo_task("deblur").variant, demo_task("restore").variant} == {"nafnet"}
    assert demo_task("upscale").variant == "srvgg" and degrade.scale_of(demo_task("upscale").spec) == 4


@pytest.mark.parametrize("args, message", [
    (["--task", "paint"], "Error: unknown task 'paint'; use one of: deblur, colorize, sketch, restore"),
    (["--task", "colorize", "--variant", "cyclegan"], "Error: unknown variant 'cyclegan' for the demo"),
    (["--budget", "0"], "Error: --budget must be a positive number of seconds"),
])
def test_demo_refuses_a_bad_choice_in_one_line_before_starting(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("IMG2IMG_STATE_DIR", str(tmp_path / "state"))  # nothing may be started or written
    result = cli("demo", *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("degradation, task", [("gray", "colorize"), ("edges", "sketch"), (None, None)])
def test_served_model_says_its_task(degradation, task):
    import torch

    from registry.loading import LoadedModel

    info = LoadedModel(torch.nn.Identity(), "m", "1", "pix2pix", 1, degradation=degradation).info()
    assert info["task"] == task and info["degradation"] == degradation


@pytest.mark.parametrize("budget_s, says", [(60, "after 1 minute of CPU training"),
                                            (15, "after 0.25 minutes of CPU training"),
                                            (300, "after 5 minutes of CPU training"),
                                            (None, "")])  # None: an earlier run's model was reused
def test_demo_verdict_says_the_training_budget_it_had(budget_s, says):
    from img2img_demo.run import verdict

    mean = {"input_psnr": 30.0, "output_psnr": 32.0, "input_ssim": 0.8, "output_ssim": 0.85}
    text = verdict(demo_task("deblur"), "nafnet", mean, budget_s)
    assert "improves the degraded photos by 2.00 dB" in text
    assert (says in text) if says else "minute" not in text



@pytest.mark.parametrize("name", list(DEMO_TASKS))
@pytest.mark.parametrize("quick", [False, True])
def test_every_demo_training_fits_the_dataset_the_demo_ingests(name, quick):
    """What the demo submits for its own variant (its CPU settings and the task's recipe) passes
    the checks a training job makes against the dataset: the config, the crops against the 96 px
    stored ones, settings that need inputs drawn afresh against a dataset made with a spec."""
    from img2img_demo.run import demo_train_flags, demo_train_spec
    from jobs.training.driver import check_fit
    from registry.manifest import Manifest, Shard

    task = demo_task(name)
    spec_text = task.quick_spec if quick else task.spec
    scale = degrade.scale_of(spec_text)
    manifest = Manifest(task.dataset(quick), "paired", "synth", "now", "sample", 96, spec_text, 0, scale=scale,
                        splits={"train": [Shard("train/0.parquet", 64, "0", 1)], "val": [Shard("val/0.parquet", 16, "0", 1)]})
    train = demo_train_spec(task.dataset(quick), task.variant, 300, scale, task.train_config(task.variant))
    train.validate()
    plan = check_fit(train, manifest)
    assert plan.total_steps is None or plan.total_steps > 0
    # the command the report and the CLI print trains the same config, and fits too
    again = _spec_from_flags(task.dataset(quick), demo_train_flags(train))
    assert again.variant_config().__dict__ == train.variant_config().__dict__
    check_fit(again, manifest)


def _spec_from_flags(dataset: str, flags: str):
    """A TrainSpec from `img2img train` options as a shell splits them (the ones the demo prints)."""
    import shlex

    from jobs.training.spec import TrainSpec
    from translator.config import parse_overrides

    args, spec = shlex.split(flags), TrainSpec(dataset=dataset, variant="")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    for flag, attr, kind in (("--variant", "variant", str), ("--image-size", "image_size", int),
                             ("--batch-size", "batch_size", int)):
        if flag in args:
            setattr(spec, attr, kind(args[args.index(flag) + 1]))
    spec.config = parse_overrides(sets)
    return spec


def test_deblur_demo_trains_nafnet_with_the_blind_recipe_and_other_variants_with_their_defaults():
    from img2img_demo.run import demo_train_spec

    task = demo_task("deblur")
    assert task.train_config("nafnet") == {"loss": "l1_fft", "color_jitter": "0.3", "degrade": "auto"}
    assert task.train_config("autoencoder") == {}  # the recipe was measured for nafnet only
    assert demo_task("colorize").train_config("pix2pix") == {}
    # the recipe goes on top of a kind's CPU settings, it does not replace them
    assert demo_train_spec("demo-photos", "nafnet", 300, 1, task.train_config("nafnet")).config == {
        "loss": "l1_fft", "color_jitter": "0.3", "degrade": "auto"}
    assert demo_train_spec("demo-colorize", "pix2pix", 300, 1, {"ngf": "16"}).config == {
        "netG": "unet_64", "ngf": "16", "ndf": 32}
    assert demo_train_spec("demo-upscale", "srvgg", 300, 4).config == {"scale": "4"}
