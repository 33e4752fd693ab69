"""Super-resolution data: the `down:N` degradation, its scale through any composition, LR/HR
pairs whose size ratio is checked, and paired crops whose target is N times the input, aligned."""

import numpy as np
import pytest

from translator import degrade
from translator.tasks import task_for_spec


def photo(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([(np.sin(xx / 3) + 1) / 2, (np.cos(yy / 5) + 1) / 2, ((xx + yy) % 17) / 17], -1).astype(np.float32)


@pytest.mark.parametrize("spec, scale, shape", [
    ("down:2", 2, (24, 32)),
    ("down:3", 3, (16, 21)),  # 64 // 3 = 21: floor, ingest crops targets to a multiple of N first
    ("down:4", 4, (12, 16)),
    ("chain(gaussian:1.2,down:4,jpeg:75)", 4, (12, 16)),  # blur before, JPEG after: blind SR
    ("chain(down:2,noise:5)", 2, (24, 32)),
    ("chain(down:2,down:2)", 4, (12, 16)),
    ("mix(down:2,chain(gaussian:1,down:2))", 2, (24, 32)),
    (" down : 2 ", 2, (24, 32)),
    ("gaussian:1.5", 1, (48, 64)),
    ("mix(gaussian:1.5,resize:4)", 1, (48, 64)),
])
def test_down_shrinks_by_its_scale_in_any_composition(spec, scale, shape):
    img = photo(48, 64)
    out = degrade.apply(spec, img, seed=3)
    assert degrade.scale_of(spec) == scale
    assert out.shape == (*shape, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.array_equal(out, degrade.apply(spec, img, seed=3))  # seeded


def test_down_is_an_antialiased_bicubic_shrink():
    img = photo(64, 64)
    small = degrade.apply("down:4", img, seed=0)
    # close to the 4x4 box average (an antialiased shrink), far from plain decimation
    box = img.reshape(16, 4, 16, 4, 3).mean((1, 3))
    assert np.abs(small - box).mean() < np.abs(img[::4, ::4] - box).mean()


@pytest.mark.parametrize("bad, words", [
    ("down", "whole number from 2 to 8"),
    ("down:1", "whole number from 2 to 8"),
    ("down:9", "whole number from 2 to 8"),
    ("down:2.5", "whole number"),
    ("down:-2", "whole number"),
    ("down:x", "whole number"),
    ("mix(down:2,down:4)", "different factors"),
    ("mix(gaussian:1,down:2)", "different factors"),
    ("chain(down:4,down:4)", "at most 8x"),
])
def test_bad_down_specs_are_refused_with_the_rule(bad, words):
    with pytest.raises(degrade.DegradationError, match=words):
        degrade.scale_of(bad)


@pytest.mark.parametrize("spec", ["down:4", "chain(gaussian:1.2,down:4,jpeg:75)", "chain(down:2,noise:5)"])
def test_a_shrink_names_the_upscale_task(spec):
    assert task_for_spec(spec) == "upscale"


def test_down_is_listed_in_the_rules():
    assert "down:N (whole number 2-8)" in degrade.rules()


# ---- LR/HR folders: the size ratio is checked, pairs are cut aligned ---------------------------
from PIL import Image  # noqa: E402

from jobs.data.decode import DecodeBatch, pair_scale  # noqa: E402
from jobs.data.plan import IngestOptions  # noqa: E402
from jobs.data.worker import SkipFile, _sr_crop, _sr_pair  # noqa: E402


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("lr, hr, n, kept", [
    ((20, 30), (40, 60), 2, (40, 60)),  # exact
    ((20, 30), (41, 61), 2, (40, 60)),  # 1 px of rounding over: cropped
    ((20, 30), (39, 59), 2, (40, 60)),  # 1 px under: resized
    ((21, 15), (84, 60), 4, (84, 60)),
    ((20, 30), (42, 60), 2, None),  # 2 px off in width
    ((20, 30), (60, 90), 2, None),  # a 3x pair in a 2x dataset
    ((20, 30), (20, 30), 2, None),  # same size
    ((20, 30), (80, 120), 3, None),
])
def test_lr_hr_ratio_must_be_the_dataset_scale_within_a_pixel(lr, hr, n, kept):
    if kept is None:
        with pytest.raises(SkipFile, match=f"not a {n}x pair"):
            _sr_pair(rgb(*lr), rgb(*hr), n)
    else:
        assert _sr_pair(rgb(*lr), rgb(*hr), n).size == kept


def nearest_up(img: Image.Image, n: int) -> Image.Image:
    return img.resize((img.width * n, img.height * n), Image.Resampling.NEAREST)


@pytest.mark.parametrize("n, size, crops", [(2, 32, 0), (2, 32, 3), (3, 24, 2), (4, 32, 1)])
def test_ingest_cuts_the_hr_crop_at_n_times_the_lr_crop(n, size, crops):
    lr = rgb(40, 30, seed=n)
    hr = nearest_up(lr, n)  # each LR pixel is an n x n HR block: alignment is exact equality
    opts = IngestOptions(name="d", kind="aligned", size=size, crops=crops, scale=n)
    for crop in range(max(1, crops)):
        a, b = _sr_crop(lr, hr, n, opts, crop, seed=crop)
        assert a.size == (size // n,) * 2 and b.size == (size,) * 2
        assert np.array_equal(np.asarray(nearest_up(a, n)), np.asarray(b))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("augment", [False, True])
def test_training_crops_keep_each_lr_pixel_on_its_hr_block(n, augment):
    lrs = [rgb(23, 19, seed=s) for s in range(6)]
    batch = {"key": np.array([str(i) for i in range(6)]),
             "input": np.array([_png(x) for x in lrs], dtype=object),
             "target": np.array([_png(nearest_up(x, n)) for x in lrs], dtype=object)}
    out = DecodeBatch(["input", "target"], 12, augment=augment, rotate=True)(batch)
    assert out["input"].shape == (6, 3, 12, 12) and out["target"].shape == (6, 3, 12 * n, 12 * n)
    up = out["input"].repeat(n, axis=2).repeat(n, axis=3)  # crops, flips and turns applied alike
    assert np.array_equal(up, out["target"])


def _png(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("inp, tgt, n", [((10, 12), (10, 12), 1), ((10, 12), (20, 24), 2), ((10, 12), (40, 48), 4),
                                         ((10, 12), (20, 25), None), ((10, 12), (5, 6), None)])
def test_stored_pairs_are_same_size_or_a_whole_multiple(inp, tgt, n):
    if n is None:
        with pytest.raises(ValueError, match="whole multiple"):
            pair_scale((*inp, 3), (*tgt, 3))
    else:
        assert pair_scale((*inp, 3), (*tgt, 3)) == n


@pytest.mark.parametrize("opts, words", [
    (dict(degrade="down:4", size=30), "multiple of 4"),
    (dict(degrade="down:2", scale=3), "does not match"),
    (dict(degrade="gaussian:1", scale=9), "from 1 to 8"),
    (dict(kind="unaligned", scale=2), "--kind synth and LR/"),
])
def test_bad_super_resolution_ingest_options_are_refused(opts, words):
    from cluster.errors import Img2ImgError
    with pytest.raises(Img2ImgError, match=words):
        IngestOptions(name="d", **opts).validate()


@pytest.mark.parametrize("variant, config, data_scale, words", [
    ("srvgg", {"scale": "2"}, 2, None),
    ("srvgg", {"scale": "4"}, 4, None),
    ("nafnet", {}, 1, None),
    ("srvgg", {"scale": "4"}, 2, "use --set scale=2"),
    ("srvgg", {}, 3, "use --set scale=3"),  # the default scale 4 is refused too
    ("nafnet", {}, 2, "--variant srvgg --set scale=2"),  # a same-size variant on an SR dataset
    ("srvgg", {"scale": "2"}, 1, "same-size pairs"),
])
def test_the_variant_scale_must_be_the_datasets(variant, config, data_scale, words):
    from jobs.training.crops import scale_problem
    from jobs.training.spec import TrainSpec
    problem = scale_problem(TrainSpec(dataset="d", variant=variant, config=config), data_scale, "dataset 'd'")
    if words is None:
        assert problem is None
    else:
        assert words in problem and "\n" not in problem


@pytest.mark.parametrize("spec, size, shapes", [
    ("down:2", 32, ((16, 16), (32, 32))),
    ("chain(gaussian:1,down:4,jpeg:75)", 32, ((8, 8), (32, 32))),
    ("down:3", None, ((13, 17), (39, 51))),  # a whole 40x52 image: target cut to 39x51 first
])
def test_synthesised_pairs_store_the_input_at_one_nth(tmp_path, spec, size, shapes):
    from jobs.data.plan import Row
    from jobs.data.sources import SourceFile
    from jobs.data.worker import _row_images
    path = tmp_path / "p.png"
    rgb(52, 40).save(path)
    opts = IngestOptions(name="d", degrade=spec, size=size)
    opts.validate()
    opts.scale = degrade.scale_of(spec)
    lr, hr = _row_images(Row("p.png#0#0", (SourceFile("p.png", str(path)),)), opts, None, {})
    assert (lr.height, lr.width) == shapes[0] and (hr.height, hr.width) == shapes[1]
