"""Super-resolution models: the `srvgg` variant's shapes at every scale, its untrained output
(bicubic: the baseline), scoring against bicubic, the output pixel limit, alpha upscaled by its
own pass, and a gate that compares models of one scale only."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from registry.gate import promotion_objections
from translator import codec, images, tiling
from translator.config import ConfigError
from translator.metrics import SetTally, baseline, to_unit
from translator.variants import build_variant

TINY = {"num_feat": 8, "num_conv": 2}


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("h, w", [(37, 53), (1, 1), (16, 9)])
def test_srvgg_output_is_scale_times_any_input(scale, h, w):
    v = build_variant("srvgg", {**TINY, "scale": scale})
    assert v.descriptor.scale == scale and v.descriptor.size_multiple == 1
    assert v.translate(torch.rand(2, 3, h, w) * 2 - 1).shape == (2, 3, h * scale, w * scale)
    assert type(v).dry_run(v.config, 24) is None  # a training step on 24 px inputs, 24*scale targets


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("kw", [dict(runtime="torch", memory_format="contiguous", precision="fp32"),
                                dict(runtime="torch", memory_format="channels_last", precision="bf16"),
                                dict(runtime="onnx")])
def test_every_runtime_returns_the_upscaled_image(scale, kw):
    """What serving runs: each runtime, ONNX exported on the spot included, gives the network's
    own scale x scale larger output, not one cut to the input's size."""
    from translator import runtime

    v = build_variant("srvgg", {**TINY, "scale": scale})
    x = torch.rand(1, 3, 19, 23) * 2 - 1
    with torch.inference_mode():
        want = v.generator.float()(x)
    got = runtime.build(v.generator, v.multiple, threads=1, descriptor=v.descriptor, **kw).run(x)
    assert got.shape == (1, 3, 19 * scale, 23 * scale)
    assert (got - want).abs().max() <= (runtime.ONE_8BIT_LEVEL * 4 if kw.get("precision") == "bf16" else 1e-4)


@pytest.mark.parametrize("scale", [2, 4])
def test_an_export_without_a_descriptor_keeps_the_networks_scale(tmp_path, scale):
    from translator import export

    v = build_variant("srvgg", {**TINY, "scale": scale})
    runner = export.load_runner(export.export(v.generator, "onnx", tmp_path / "m.onnx").path, "onnx")
    assert runner(torch.rand(1, 3, 19, 23) * 2 - 1).shape == (1, 3, 19 * scale, 23 * scale)


@pytest.mark.parametrize("bad", [{"scale": "1"}, {"scale": "5"}, {"scale": "2.5"}, {"num_feat": "0"}])
def test_srvgg_refuses_settings_it_cannot_build(bad):
    with pytest.raises((ConfigError, ValueError)):
        build_variant("srvgg", bad)


def test_untrained_srvgg_is_the_bicubic_baseline():
    v = build_variant("srvgg", {**TINY, "scale": 2, "ema_decay": 0})
    x = torch.rand(1, 3, 20, 30) * 2 - 1
    out = v.translate(x)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(baseline(x, (40, 60)), expected.clamp(-1, 1))
    assert baseline(x, (20, 30)) is x  # same size: the input itself


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tiled_sr_equals_untiled(scale):
    torch.manual_seed(0)
    v = build_variant("srvgg", {**TINY, "scale": scale, "ema_decay": 0})
    for p in v.generator.parameters():  # untrained it is bicubic: give it some weights to blend
        torch.nn.init.normal_(p, 0, 0.05)
    x = torch.rand(1, 3, 90, 110) * 2 - 1
    whole = v.translate(x)
    tiled = tiling.enhance(v.translate, x, tile=48, overlap=16, scale=scale)  # 9 tiles
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() < 1e-4  # the same-size seam guarantee


def test_sr_input_psnr_is_bicubics():
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    x = torch.nn.functional.avg_pool2d(y, 2)
    tally = SetTally()
    tally.add(to_unit(y), to_unit(y), to_unit(baseline(x, y.shape[-2:])))
    manual = -10 * np.log10(float(((to_unit(baseline(x, (32, 32))) - to_unit(y)) ** 2).mean()))
    assert tally.summary()["input_psnr"] == pytest.approx(manual, abs=1e-6)


@pytest.mark.parametrize("w, h, scale, limit, words", [
    (37, 53, 2, 10_000, None),
    (60, 60, 2, 10_000, "120x120 = 0.0 MP, over the 0.0 MP limit on the output"),
    (50, 50, 4, 40_000, None),  # 200 x 200 = 40,000: exactly the limit
    (51, 50, 4, 40_000, "on the output"),
    (200, 201, 1, 40_000, "image is 200x201"),  # the input itself is checked first
    (300, 300, 4, 40_000, "image is 300x300"),
])
def test_the_pixel_limit_holds_for_the_output_too(w, h, scale, limit, words):
    refusal = codec.over_pixel_limit(w, h, limit, "img2img serve deploy --model m", scale)
    if words is None:
        assert refusal is None
    else:
        assert words in refusal and "--max-megapixels" in refusal
    body = io.BytesIO()
    Image.new("RGB", (w, h)).save(body, "PNG")
    if words is None:
        assert codec.decode(body.getvalue(), limit, scale=scale).scale == scale
    else:
        with pytest.raises(codec.RequestError) as e:
            codec.decode(body.getvalue(), limit, scale=scale)
        assert e.value.status == 413


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_alpha_is_upscaled_by_its_own_pass(dtype, top):
    alpha = np.tile(np.linspace(0, top, 10).astype(dtype), (6, 1))
    big = images.resize_alpha(alpha, (12, 20))
    assert big.shape == (12, 20) and big.dtype == dtype
    assert big.min() >= 0 and big.max() <= top and np.all(np.diff(big[0].astype(np.int64)) >= 0)


def test_an_upscaled_rgba_image_keeps_its_alpha_at_the_output_size():
    src = Image.new("RGBA", (9, 7), (10, 20, 30, 128))
    body = io.BytesIO()
    src.save(body, "PNG")
    decoded = codec.decode(body.getvalue(), 10_000, scale=3)
    out = torch.zeros(1, 3, 21, 27)
    data, media = codec.encode(out, decoded, "png")
    img = Image.open(io.BytesIO(data))
    assert media == "image/png" and img.mode == "RGBA" and img.size == (27, 21)
    assert np.all(np.asarray(img.getchannel("A")) == 128)


@pytest.mark.parametrize("scales, refused", [({"2": 2, "1": 2}, False), ({"2": 4, "1": 2}, True),
                                             ({"2": 2, "1": 1}, True), ({}, False)])
def test_the_gate_compares_models_of_one_scale(scales, refused):
    score = {"1": {"psnr": 30.0, "gain_db": 1.0}, "2": {"psnr": 31.0, "gain_db": 2.0}}
    reasons = promotion_objections("2", "1", score, "psnr", "sr2/val", scales)
    assert bool(reasons) == refused
    if refused:
        assert "one scale" in reasons[0]
