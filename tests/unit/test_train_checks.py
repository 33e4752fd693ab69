"""Requests refused before submission instead of failing in the workers after start-up: training
crops the networks or the stored images cannot take, --resume against another variant or
architecture, which validation streams a job has; and the exit status of a followed job."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch

from cluster.errors import Img2ImgError
from jobs.manage import outcome_error
from jobs.training.crops import crop_problem
from jobs.training.driver import val_streams
from jobs.training.plan import Cadence, make_plan
from jobs.training.resume import apply_resume
from jobs.training.spec import TrainSpec
from jobs.training.worker import WorkerJob
from registry.manifest import Manifest, Shard
from translator.config import make_config
from translator.variants import VARIANTS, get_variant


def _spec(variant: str, size: int | None = None, **config) -> TrainSpec:
    return TrainSpec(dataset="d", variant=variant, image_size=size, config=config)


def _fixes(message: str) -> list[list[str]]:
    """The `use A or B` options of a refusal, each as CLI words (`--image-size 64 --set netG=unet_64`)."""
    tail = message.split("; use ", 1)[1].split(", or re-ingest")[0]
    return [opt.split() for opt in tail.split(" or ")]


def _apply(spec: TrainSpec, words: list[str]) -> TrainSpec:
    out = dataclasses.replace(spec, config=dict(spec.config))
    for flag, value in zip(words[::2], words[1::2]):
        if flag == "--image-size":
            out.image_size = int(value)
        else:
            key, _, v = value.partition("=")
            out.config[key] = v
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_at_its_default_crop(variant):
    assert crop_problem(_spec(variant), None) is None


@pytest.mark.parametrize("variant, size, config, stored, expect", [
    # the README's 96 px photos with pix2pix's 256 px default: no U-Net of depth 8 fits them
    ("pix2pix", None, {}, 96, "dataset 'd' stores 96x96 images, smaller than the 256 px training crops "
                              "(pix2pix's default --image-size 256); use --image-size 96 --set netG=unet_32, "
                              "or re-ingest with --size 256"),
    ("pix2pix", 128, {}, 256, "pix2pix cannot train on 128 px crops (--image-size 128): its generator (netG "
                              "unet_256) takes sides that are a multiple of 256 px; use --image-size 256 or "
                              "--set netG=unet_128"),
    ("pix2pix", 384, {}, None, "a multiple of 256 px; use --image-size 512 or --set netG=unet_128"),
    ("dualgan", 48, {"netG": "unet_32"}, 48, "its generator (netG unet_32) takes sides that are a multiple of 32 px; "
                                             "use --image-size 32"),
    ("autoencoder", 72, {}, 256, "autoencoder cannot train on 72 px crops (--image-size 72): its generator takes "
                                 "sides that are a multiple of 16 px; use --image-size 80 or --image-size 64"),
    ("cyclegan", 26, {"n_blocks": 1}, 96, "its generator takes sides that are a multiple of 4 px; use --image-size 28 "
                                          "or --image-size 24"),
    # a multiple of the generator's 4, but under the PatchGAN's minimum
    ("cyclegan", 16, {"n_blocks": 1}, 96, "cyclegan cannot train on 16 px crops (--image-size 16): a training step "
                                          "fails at this size (ValueError: Expected more than 1 spatial element"),
    ("nafnet", 50, {}, 32, "dataset 'd' stores 32x32 images, smaller than the 50 px training crops (--image-size "
                           "50); use --image-size 32, or re-ingest with --size 50"),
])
def test_crops_that_cannot_train_are_refused_with_a_fix_that_works(variant, size, config, stored, expect):
    spec = _spec(variant, size, **config)
    message = crop_problem(spec, stored, "dataset 'd'")
    assert message is not None and expect in message, message
    for words in _fixes(message):  # every suggested fix is itself accepted
        fixed = _apply(spec, words)
        assert crop_problem(fixed, stored, "dataset 'd'") is None, (words, crop_problem(fixed, stored))


def test_a_kept_size_dataset_is_held_to_its_smallest_training_image():
    spec = _spec("pix2pix", 256, netG="unet_128")
    message = crop_problem(spec, 200, "dataset 'd'", square=False)
    assert message.startswith("dataset 'd' keeps its images' sizes and its smallest training image is 200 px on "
                              "its short side, smaller than the 256 px training crops (--image-size 256); "), message
    for words in _fixes(message):
        assert crop_problem(_apply(spec, words), 200, "dataset 'd'", square=False) is None, words
    assert crop_problem(_spec("pix2pix", 128, netG="unet_128"), 200, "dataset 'd'", square=False) is None
    # nafnet pads, so the fix is the image's own side, not the multiple below it
    assert "use --image-size 88," in crop_problem(_spec("nafnet", 256), 88, "dataset 'd'", square=False)


def test_nafnet_pads_so_any_crop_up_to_the_stored_size_trains():
    assert all(crop_problem(_spec("nafnet", s), 96) is None for s in (8, 50, 72, 96))


@pytest.mark.parametrize("variant, config, bad, good", [
    ("pix2pix", {"netG": "unet_32", "ngf": 4, "ndf": 4, "batch_size": 1}, 48, 64),
    ("cyclegan", {"ngf": 4, "ndf": 4, "n_blocks": 1, "batch_size": 1}, 16, 24),
    ("autoencoder", {"nf": 4, "batch_size": 2}, 24, 32),
])
def test_the_dry_run_agrees_with_a_real_training_step(variant, config, bad, good):
    """The meta-device check refuses exactly what a real CPU step fails on."""
    cls = get_variant(variant)
    cfg = make_config(cls.Config, config)
    for size, ok in ((bad, False), (good, True)):
        assert (cls.dry_run(cfg, size) is None) == ok
        x = torch.rand(cfg.batch_size, 3, size, size) * 2 - 1
        batch = {"input": x, "target": x} if cls.paired else {"a": x, "b": x}
        try:
            with warnings.catch_warnings():  # the loss's "target size differs" before it fails
                warnings.simplefilter("ignore")
                cls.from_config(cfg).training_step(batch)
            ran = True
        except (RuntimeError, ValueError):
            ran = False
        assert ran == ok, (variant, size)


def _meta(variant: str, **config) -> dict:
    cfg = make_config(get_variant(variant).Config, config)
    return {"variant": variant, "step": 6, "config": dataclasses.asdict(cfg), "dataset": "blur"}


PIX = {"netG": "unet_64", "ngf": 8, "ndf": 8}


def test_resume_without_variant_takes_the_checkpoints_variant_and_config():
    spec = TrainSpec(dataset="blur", variant="", resume="run1", lr=1e-4)
    apply_resume(spec, _meta("pix2pix", **PIX))
    cfg = spec.variant_config()
    assert spec.variant == "pix2pix" and (cfg.netG, cfg.ngf, cfg.ndf) == ("unet_64", 8, 8)
    assert cfg.lr == 1e-4  # what changes no network may differ


def test_resume_keeps_the_runs_data_settings():
    """Resuming continues the same run: unlike --init-from on another dataset, the inputs drawn
    afresh and the jitter are the checkpoint's."""
    spec = TrainSpec(dataset="blur", variant="", resume="run1")
    apply_resume(spec, _meta("nafnet", degrade="auto", color_jitter=0.3, multiscale=0.2))
    cfg = spec.variant_config()
    assert (cfg.degrade, cfg.color_jitter, cfg.multiscale) == ("auto", 0.3, 0.2)


@pytest.mark.parametrize("variant, config, message", [
    ("nafnet", {}, "--resume run1 trained pix2pix; it cannot be used as nafnet (drop --variant, or pass "
                   "--variant pix2pix)"),
    ("pix2pix", {"ngf": "many"}, "ngf"),  # an invalid --set is one line, not a traceback
    ("pix2pix", {"ngf": "16"}, "--resume run1: a different architecture (G.model.model.0.weight is shape [8, 3, 4, 4] "
                               "in the checkpoint, shape [16, 3, 4, 4] in this run); drop the --set options that "
                               "change the network"),
    ("pix2pix", {"netG": "unet_128"}, "--resume run1: a different architecture"),
])
def test_resume_refuses_another_variant_or_architecture(variant, config, message):
    spec = TrainSpec(dataset="blur", variant=variant, config=config, resume="run1")
    with pytest.raises(Img2ImgError) as e:
        apply_resume(spec, _meta("pix2pix", **PIX))
    assert message in str(e.value)


def test_resume_of_a_checkpoint_without_its_variant_needs_one():
    with pytest.raises(Img2ImgError, match="does not record its variant; pass --variant"):
        apply_resume(TrainSpec(dataset="blur", variant="", resume="run1"), {})
    spec = TrainSpec(dataset="blur", variant="autoencoder", resume="run1")
    apply_resume(spec, {})
    assert spec.variant == "autoencoder"


def _manifest(kind: str, val: dict[str | None, int]) -> Manifest:
    shards = [Shard(f"val/{d or 'p'}.parquet", n, "0", 1, d) for d, n in val.items()]
    train = [Shard(f"train/{d}.parquet", 4, "0", 1, d) for d in ((None,) if kind == "paired" else ("a", "b"))]
    return Manifest("d", kind, "synth", "now", "here", 32, None, 0, splits={"train": train, "val": shards})


@pytest.mark.parametrize("kind, val, streams", [
    ("paired", {None: 2}, ["val"]),
    ("unpaired", {"a": 2, "b": 1}, ["val_a", "val_b"]),
    ("unpaired", {"a": 2}, ["val_a"]),  # testB/ missing, or a 1-image trainB/
    ("unpaired", {"a": 0, "b": 3}, ["val_b"]),
])
def test_only_val_streams_with_rows_reach_the_workers(kind, val, streams):
    manifest = _manifest(kind, val)
    assert val_streams(manifest) == streams
    plan = make_plan({"train": 4}, 1, 1, 1, None, 1)
    job = WorkerJob(spec=TrainSpec(dataset="d"), plan=plan, cadence=Cadence.parse("auto"), variant_config={},
                    paired=kind == "paired", tracking_uri="http://x", val_streams=tuple(streams))
    assert WorkerJob.from_loop_config(job.to_loop_config()).val_streams == tuple(streams)


def test_a_followed_job_that_did_not_succeed_is_an_error_naming_its_status():
    assert outcome_error("raysubmit_1", "SUCCEEDED", "done") is None
    e = outcome_error("raysubmit_1", "FAILED", "Job failed\nError: training failed: EmptyShardError: no rows")
    assert str(e) == ("job raysubmit_1 FAILED: Error: training failed: EmptyShardError: no rows; "
                      "see `img2img jobs logs raysubmit_1`")
    assert str(outcome_error("raysubmit_1", "STOPPED", "", logs_hint=False)) == "job raysubmit_1 STOPPED"
    assert re.fullmatch(r"job \S+ STOPPED; see .*", str(outcome_error("raysubmit_1", "STOPPED")))


@pytest.mark.parametrize("kw, message", [
    (dict(lr=float("inf")), "lr must be a finite number, got inf"),  # trained to nan and registered
    (dict(config={"lr": float("inf")}), "lr must be a finite number, got inf"),
    (dict(lr=0.0), "lr must be > 0, got 0"),
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
    (dict(image_size=7), "image_size must be at least 8 px, got 7"),
    (dict(time_budget_s=float("inf")), "--time-budget must be a positive number of seconds, got inf"),
    (dict(time_budget_s=float("nan")), "--time-budget must be a positive number of seconds, got nan"),
    (dict(config={"width": 0}), r"nafnet cannot be built with these settings \(ValueError: groups must be"),
    (dict(config={"width": -4}), "width must be at least 0, got -4"),
    # a zero width builds layers without weights, which only fail at the first training step
    (dict(variant="autoencoder", config={"nf": 0}), r"autoencoder cannot be built .*G\.\S+ would have no weights"),
    (dict(variant="pix2pix", config={"ngf": 0}), r"pix2pix cannot be built .*G\.\S+ would have no weights"),
    (dict(variant="pix2pix", config={"ndf": 0}), r"pix2pix cannot be built .*D\.\S+ would have no weights"),
    (dict(variant="cyclegan", config={"n_blocks": -1}), "n_blocks must be at least 0, got -1"),
    (dict(variant="pix2pix", config={"n_layers_D": -1}), "n_layers_D must be at least 0, got -1"),
    (dict(variant="cyclegan", config={"pool_size": -1}), "pool_size must be at least 0, got -1"),
    (dict(variant="pix2pix", config={"lambda_l1": -1}), "lambda_l1 must be at least 0, got -1"),
    (dict(variant="dualgan", config={"clip": 0}), "clip must be > 0 when gradient_penalty is 0"),
    (dict(variant="dualgan", config={"gradient_penalty": -1}), "gradient_penalty must be 0"),
    (dict(model_name="bad/name"), "--model-name 'bad/name' cannot name a registered model: .*'/' or ':'"),
    (dict(model_name="a:b"), "--model-name 'a:b' cannot name a registered model"),
])
def test_requests_that_cannot_train_or_register_are_refused_before_submission(kw, message):
    """Each of these was submitted and either trained to nan, or failed in every worker (a
    network that cannot be built), or trained fully and then failed to register."""
    with pytest.raises(Img2ImgError, match=message):
        TrainSpec(dataset="d", **kw).validate()
    TrainSpec(dataset="d", model_name="fine-name_1.2").validate()


def test_settings_no_crop_can_train_are_blamed_not_the_crop():
    """pix2pix with --set gan_mode=bogus builds but no training step runs at any size: the fix
    is the --set value, not another --image-size."""
    spec = TrainSpec(dataset="d", variant="pix2pix", config={"gan_mode": "bogus"})
    spec.validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = crop_problem(spec, 256)
    assert problem.endswith("no other crop size trains either: check the --set values"), problem



@pytest.mark.parametrize("key,flag,value", [("image_size", "--image-size", 128), ("batch_size", "--batch-size", 4),
                                            ("lr", "--lr", 0.01)])
def test_a_setting_given_twice_with_different_values_is_refused(key, flag, value):
    """`--set image_size=64 --image-size 128`: one of the two would be ignored without a word."""
    other = {"image_size": "64", "batch_size": "8", "lr": "0.002"}[key]
    spec = dataclasses.replace(_spec("autoencoder", **{key: other}), **{key: value})
    with pytest.raises(Img2ImgError, match=f"--set {key}={other} and {flag} {value:g} disagree; give one of them"):
        spec.validate()
    same = dataclasses.replace(_spec("autoencoder", **{key: str(value)}), **{key: value})
    assert getattr(same.variant_config(), key) == value  # the same value twice is no conflict
