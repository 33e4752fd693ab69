"""The translator variants: shapes, reference parameter counts, learning, persistence."""

import pytest
import torch

from translator.config import ConfigError, make_config, parse_overrides
from translator.nets.common import count_parameters
from translator.variants import VARIANTS, build_variant, get_variant

# Small but faithful configs so every variant runs in seconds on a CPU: each variant declares its
# own (`Variant.smoke`), so these tests walk the registry and a new variant is checked with no edit here.
TINY = {name: cls.smoke.config for name, cls in VARIANTS.items()}


def tiny(name: str) -> dict:
    """The variant's smoke config, read at call time (a variant registered by a test is included)."""
    return dict(VARIANTS[name].smoke.config)


def batch_for(variant, n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    y = -0.8 * x.roll(1, dims=-1)  # a learnable, deterministic mapping of smooth images
    if variant.scale != 1:  # super-resolution: the target is `scale` times the input's size
        y = torch.nn.functional.interpolate(y, size=(size * variant.scale,) * 2, mode="bilinear", align_corners=False)
    return {"input": x, "target": y} if variant.paired else {"a": x, "b": y}


def test_registry_lists_all_five_variants_and_rejects_unknown():
    assert set(VARIANTS) == {"autoencoder", "pix2pix", "cyclegan", "dualgan", "nafnet", "srvgg"}
    with pytest.raises(ValueError, match="unknown variant 'vae'"):
        get_variant("vae")


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("batch_size", [1, 2])
def test_generator_keeps_shape_and_range(name, batch_size):
    v = build_variant(name, tiny(name))
    v.eval()
    x = torch.rand(batch_size, 3, 32, 32) * 2 - 1
    y = v.translate(x)
    assert y.shape == (batch_size, 3, 32 * v.scale, 32 * v.scale)
    if name not in ("nafnet", "srvgg"):  # tanh output; nafnet and srvgg add a residual to their input
        assert y.abs().max() <= 1.0
    if not v.paired:
        assert v.translate(x, reverse=True).shape == x.shape


def test_param_counts_match_reference_implementations():
    p2p_256 = build_variant("pix2pix")
    p2p_128 = build_variant("pix2pix", {"netG": "unet_128"})
    cyc = build_variant("cyclegan")
    gopro = build_variant("nafnet", {"preset": "gopro"})
    counts = {
        "pix2pix G unet_256": count_parameters(p2p_256.nets["G"]),
        "pix2pix G unet_128": count_parameters(p2p_128.nets["G"]),
        "pix2pix D (6 in, batch norm)": count_parameters(p2p_256.nets["D"]),
        "cyclegan G resnet_9blocks": count_parameters(cyc.nets["G_A"]),
        "cyclegan D (3 in, instance norm)": count_parameters(cyc.nets["D_A"]),
        "nafnet gopro (width 64)": count_parameters(gopro.nets["G"]),
        "nafnet tiny": count_parameters(build_variant("nafnet").nets["G"]),
    }
    for label, n in counts.items():
        print(f"{label:36s} {n:>12,d}")
    assert counts["pix2pix G unet_256"] == 54_413_955
    assert counts["pix2pix G unet_128"] == 41_828_995
    assert counts["pix2pix D (6 in, batch norm)"] == 2_768_705
    assert counts["cyclegan G resnet_9blocks"] == 11_378_179
    assert counts["cyclegan D (3 in, instance norm)"] == 2_764_737
    assert counts["nafnet tiny"] < 2_000_000 < 60_000_000 < counts["nafnet gopro (width 64)"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_one_training_step_updates_every_network(name):
    torch.manual_seed(0)
    v = build_variant(name, tiny(name))
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in v.networks().items()}
    logs = v.training_step(batch_for(v))
    assert logs and all(isinstance(x, float) for x in logs.values())
    for k, net in v.networks().items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))
        assert changed, f"{name}: network {k} did not change"


# bf16 + channels_last is what training uses on CPUs with native bf16 (emulated, so slower, on
# other CPUs: the maths is the same): every variant must learn in both.
FAST = [(n, f) for f in (False, True) for n in VARIANTS]


@pytest.mark.parametrize("name, fast", FAST, ids=[f"{n}-{'bf16-channels_last' if f else 'fp32'}" for n, f in FAST])
def test_overfits_a_tiny_fixed_batch(name, fast):
    torch.manual_seed(0)
    cfg = {**tiny(name), **VARIANTS[name].smoke.fit}  # e.g. no dropout: a fixed batch must be fit exactly
    v = build_variant(name, cfg, amp="bf16" if fast else None, channels_last=fast)
    batch = batch_for(v, n=2, size=32)
    key = VARIANTS[name].smoke.fit_loss  # the reconstruction-type loss, which must fall
    first = last = v.training_step(batch)[key]
    steps = 1
    while steps < 200 and last >= 0.5 * first:  # stop as soon as the loss has halved
        last = v.training_step(batch)[key]
        steps += 1
    print(f"{name}: {key} {first:.4f} -> {last:.4f} in {steps} steps")
    assert last < 0.5 * first


@pytest.mark.parametrize("name", list(VARIANTS))
def test_channels_last_gradients_have_their_parameters_strides(name):
    """DistributedDataParallel aliases each gradient to its bucket only when the two have the same
    strides; otherwise it warns in every multi-worker job's log ("Grad strides do not match bucket
    view strides ... may impair performance") and copies the gradient every step. NAFNet's
    (1, C, 1, 1) beta and gamma were given channels_last strides their gradients never have."""
    torch.manual_seed(0)
    v = build_variant(name, tiny(name), amp="bf16", channels_last=True)
    v.training_step(batch_for(v))
    for key, net in v.nets.items():
        for pname, p in net.named_parameters():
            if p.grad is not None:
                assert p.grad.stride() == p.stride(), (key, pname, tuple(p.shape), p.stride(), p.grad.stride())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_round_trip_gives_identical_outputs(name):
    torch.manual_seed(0)
    a = build_variant(name, tiny(name))
    a.training_step(batch_for(a))
    b = build_variant(name, tiny(name))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(a.translate(x), b.translate(x))
    assert b.step == a.step == 1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_bf16_channels_last_checkpoint_loads_into_a_plain_fp32_variant(name):
    """Trained fast on a bf16 CPU, evaluated and served anywhere: the weights are fp32 either way."""
    torch.manual_seed(0)
    a = build_variant(name, tiny(name), amp="bf16", channels_last=True)
    a.training_step(batch_for(a))
    b = build_variant(name, tiny(name))
    b.load_state_dict(a.state_dict())
    for key, net in a.nets.items():
        for (pname, pa), pb in zip(net.state_dict().items(), b.nets[key].state_dict().values()):
            assert pa.dtype == pb.dtype and torch.equal(pa, pb), pname
    out = a.translate(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert out.dtype == torch.float32 and out.is_contiguous()


def test_validation_translates_in_fp32_whatever_the_training_precision():
    """Training's validation stands for the registered model's evaluation (`img2img eval`, fp32):
    `translate(fp32=True)` of a bf16 variant gives the fp32 variant's output, not bf16's."""
    from translator.precision import strict_fp32

    torch.manual_seed(0)
    a = build_variant("pix2pix", TINY["pix2pix"], amp="bf16", channels_last=True)
    b = build_variant("pix2pix", TINY["pix2pix"])
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    exact = b.translate(x)
    assert (a.translate(x, fp32=True) - exact).abs().max() < 1e-7
    assert (a.translate(x) - exact).abs().max() > 1e-5  # bf16: what validation used to score
    before = torch.backends.cudnn.allow_tf32
    with strict_fp32("cuda"):  # on CUDA: no TF32 (cuDNN's default) inside, restored after
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 == before


def test_training_precision_is_detected_not_assumed():
    from translator.precision import training_precision

    assert training_precision("auto", "cpu", native_bf16=True) == ("bf16", True)
    assert training_precision("auto", "cpu", native_bf16=False) == (None, False)
    assert training_precision("auto", "cuda", native_bf16=False) == ("bf16", False)
    assert training_precision("fp32", "cpu", native_bf16=True) == (None, False)
    assert training_precision("bf16", "cpu", native_bf16=False) == ("bf16", True)
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        training_precision("fp8", "cpu")


def test_nafnet_any_size_and_identity_at_init():
    v = build_variant("nafnet", TINY["nafnet"])
    v.eval()
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    y = v.translate(x)
    assert y.shape == x.shape
    # The ending conv starts at zero, so an untrained net returns its input unchanged.
    assert torch.allclose(y, x)


def test_config_overrides_are_typed_and_validated():
    cfg = make_config(get_variant("nafnet").Config, parse_overrides(["width=32", "enc_blocks=1,2", "lr=1e-4"]))
    assert cfg.width == 32 and cfg.enc_blocks == [1, 2] and cfg.lr == 1e-4
    with pytest.raises(ConfigError, match="unknown setting 'widht'"):
        make_config(get_variant("nafnet").Config, {"widht": "3"})
    with pytest.raises(ConfigError, match="lr must be float"):
        make_config(get_variant("nafnet").Config, {"lr": "fast"})
    with pytest.raises(ValueError, match="unknown U-Net"):
        build_variant("pix2pix", {"netG": "unet_100"})


def test_lr_schedules():
    v = build_variant("pix2pix", TINY["pix2pix"])
    v.set_total_steps(4)
    lrs = []
    for _ in range(4):
        v.training_step(batch_for(v, n=1))
        lrs.append(v.opts["G"].param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2e-4) and lrs[-1] == pytest.approx(0.0)
    n = build_variant("nafnet", TINY["nafnet"])
    n.set_total_steps(2)
    n.training_step(batch_for(n, n=1))
    assert n.opts["G"].param_groups[0]["lr"] == pytest.approx(0.5 * n.config.lr)  # cosine half-way


@pytest.mark.parametrize("policy, used, factor", [("cosine", 0.5, 0.5), ("cosine", 1.0, 0.0), ("cosine", 0.0, 1.0),
                                                  ("linear", 0.25, 1.0), ("linear", 0.75, 0.5), ("constant", 0.9, 1.0)])
def test_a_time_budget_that_ends_the_run_drives_the_lr_schedule(policy, used, factor):
    """A run its --time-budget ends far before its step total anneals by the budget's share used,
    not by a step count it will never reach."""
    n = build_variant("nafnet", {**TINY["nafnet"], "lr_policy": policy, "decay_start": 0.5})
    n.set_total_steps(1_000_000)
    n.set_budget_used(used)
    assert n.opts["G"].param_groups[0]["lr"] == pytest.approx(factor * n.config.lr)
    n.set_total_steps(4)
    n.step = 3  # the step count, when further along than the budget, still wins
    n.set_budget_used(0.0)
    assert n.lr <= n.config.lr * (1.0 if policy == "constant" else 0.5 + 1e-9)


def test_ema_is_the_inference_network_and_survives_checkpoints():
    """ema_decay > 0: validation, registration and serving see the weights' moving average; a
    resumed run keeps averaging; a weights-only load (registration, --init-from) starts from it."""
    torch.manual_seed(0)
    v = build_variant("nafnet", {**TINY["nafnet"], "ema_decay": 0.9})
    batch = batch_for(v)
    live = v.nets["G"]
    before = [p.detach().clone() for p in live.parameters()]
    for _ in range(5):
        v.training_step(batch)
    ema = list(v.generator.parameters())
    assert v.generator is not live and int(v.ema.n_averaged) == 5
    # strictly between the starting and the live weights: an average, not a copy of either
    moved = sum(float((e - b).abs().sum()) for e, b in zip(ema, before))
    lag = sum(float((e - p.detach()).abs().sum()) for e, p in zip(ema, live.parameters()))
    assert moved > 0 and lag > 0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert not torch.allclose(v.translate(x), live(x))  # translate() uses the average
    resumed = build_variant("nafnet", {**TINY["nafnet"], "ema_decay": 0.9})
    resumed.load_state_dict(v.state_dict())
    assert torch.equal(resumed.translate(x), v.translate(x)) and int(resumed.ema.n_averaged) == 5
    for weights_only in (build_variant("nafnet", TINY["nafnet"]), build_variant("nafnet", {**TINY["nafnet"], "ema_decay": 0.9})):
        weights_only.load_state_dict(v.state_dict(), with_optimizers=False)
        assert torch.equal(weights_only.nets["G"](x), v.translate(x))
    with pytest.raises(ValueError, match="ema_decay must be 0"):
        build_variant("nafnet", {"ema_decay": 1.0})
    with pytest.raises(ValueError, match="augment must be one of hflip, d4"):
        build_variant("nafnet", {"augment": "rot45"})


def test_nafnet_learning_rate_follows_the_preset_unless_set():
    """tiny trains at 2e-3 (measured better at CPU budgets), the paper's presets at its 1e-3."""
    nafnet = get_variant("nafnet").Config
    assert make_config(nafnet).lr == 2e-3
    assert make_config(nafnet, {"preset": "gopro"}).lr == 1e-3
    assert make_config(nafnet, {"preset": "width32", "lr": "5e-4"}).lr == 5e-4
    assert make_config(nafnet, {"lr": "1e-3"}).lr == 1e-3


def test_a_checkpoint_brings_the_moments_not_the_hyper_parameters():
    """A resumed run, or a PBT trial cloned from another's checkpoint, trains with its own lr and
    betas: the checkpoint's optimiser state brings the moments and the step."""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    donor = build_variant("autoencoder", {"nf": 4, "batch_size": 2, "lr": 1e-3, "beta1": 0.5})
    donor.training_step({"input": x, "target": x})
    clone = build_variant("autoencoder", {"nf": 4, "batch_size": 2, "lr": 3e-4, "beta1": 0.9})
    clone.load_state_dict(donor.state_dict())
    group = clone.opts["G"].param_groups[0]
    assert clone.lr == pytest.approx(3e-4) and group["initial_lr"] == pytest.approx(3e-4)
    assert group["betas"][0] == 0.9 and clone.step == donor.step == 1
    moments = donor.opts["G"].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(clone.opts["G"].state_dict()["state"][0]["exp_avg"], moments)
    clone.training_step({"input": x, "target": x})
    assert clone.lr == pytest.approx(3e-4)
