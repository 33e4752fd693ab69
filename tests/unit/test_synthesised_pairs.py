"""Training inputs synthesised on the fly (`--set degrade=SPEC|auto|stored`): each training crop's
input is made from its target by a fresh draw of the spec, with real context at the crop's edge,
in the dataset's scale; validation keeps the stored pairs."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cluster.errors import Img2ImgError
from jobs.data.decode import SYNTH_MARGIN, DecodeBatch
from jobs.data.stream import synthesis
from translator import degrade


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _unique(h: int, w: int) -> np.ndarray:
    """Every pixel different (red: row, green: column), so a crop shows where it was cut."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows * 3, cols * 3, (rows * 7 + cols * 5) % 256], axis=-1).astype(np.uint8)


def _batch(inputs: list[np.ndarray], targets: list[np.ndarray]) -> dict:
    return {"key": np.array([str(i) for i in range(len(targets))]),
            "input": np.array([_png(x) for x in inputs], dtype=object),
            "target": np.array([_png(t) for t in targets], dtype=object)}


def _decoded(photo: np.ndarray, n: int) -> dict:
    """A batch of `n` rows of a decoded-once stream (the rows' pixels stacked, in the photo's own
    dtype), whose stored inputs are never read."""
    return {"key": np.array([str(i) for i in range(n)]), "input": np.zeros(n),
            "target": np.stack([photo] * n)}


def _where(crop: np.ndarray, full: np.ndarray) -> tuple[int, int]:
    """(top, left) of an unflipped, unturned `crop` in `full` (both HxWx3 uint8)."""
    hits = np.argwhere((full[..., 0] == crop[0, 0, 0]) & (full[..., 1] == crop[0, 0, 1]))
    assert len(hits) == 1
    return tuple(int(v) for v in hits[0])


def _hwc_u8(x: np.ndarray) -> np.ndarray:
    return np.round((x.transpose(1, 2, 0) + 1) / 2 * 255).astype(np.uint8)


def test_the_input_is_the_spec_applied_to_the_targets_crop_with_its_surroundings_not_the_stored_input(monkeypatch):
    h, w, s = 80, 72, 24
    target = _unique(h, w)
    stored = np.zeros_like(target)  # never read for training
    n = 32
    # seeded (each call draws a fresh generator): about 15% of random 24 px crops of 80x72 clear
    # the margin, so 16 unseeded crops missed it in 7% of runs
    seeded = np.random.default_rng
    monkeypatch.setattr("jobs.data.decode.np.random.default_rng", lambda seed=None: seeded(0 if seed is None else seed))
    out = DecodeBatch(["input", "target"], s, augment=True, degrade="gaussian:1.5")(_batch([stored] * n, [target] * n))
    assert out["input"].shape == out["target"].shape == (n, 3, s, s)
    whole = degrade.apply("gaussian:1.5", target.astype(np.float32) / 255, seed=0)
    inside = 0
    for x, y in zip(out["input"], out["target"]):
        inp, tgt = _hwc_u8(x), _hwc_u8(y)
        if tgt[0, 0, 1] > tgt[0, -1, 1]:  # flipped (green counts columns): flip both back
            inp, tgt = inp[:, ::-1], tgt[:, ::-1]
        t, l = _where(tgt, target)
        assert np.array_equal(tgt, target[t:t + s, l:l + s])
        assert inp.mean() > 10  # made from the target, not the stored zeros
        if min(t, l) >= SYNTH_MARGIN and t + s + SYNTH_MARGIN <= h and l + s + SYNTH_MARGIN <= w:
            # the blur at the crop's edge saw the real neighbours: as if the whole photo was blurred
            assert np.abs(inp.astype(int) - np.round(whole[t:t + s, l:l + s] * 255)).max() <= 1
            inside += 1
    assert inside > 0


def test_each_pass_draws_the_spec_afresh():
    target = _unique(40, 40)
    decode = DecodeBatch(["input", "target"], 40, augment=True, degrade="random_gaussian:0.5-3")
    a, b = (decode(_batch([target] * 4, [target] * 4))["input"] for _ in range(2))
    sharpness = lambda x: np.abs(np.diff(x, axis=-1)).mean(axis=(1, 2, 3))  # noqa: E731
    assert len({round(float(v), 6) for v in np.concatenate([sharpness(a), sharpness(b)])}) >= 7  # a sigma each


def test_super_resolution_inputs_are_cut_at_the_targets_place_in_the_datasets_scale():
    n, s = 2, 10
    target = _unique(64, 56)
    out = DecodeBatch(["input", "target"], s, augment=True, degrade="down:2")(
        _batch([np.zeros((32, 28, 3), np.uint8)] * 8, [target] * 8))
    assert out["input"].shape == (8, 3, s, s) and out["target"].shape == (8, 3, n * s, n * s)
    for x, y in zip(out["input"], out["target"]):  # a 2x shrink of the target crop, turned alike
        small = degrade.apply("down:2", (y.transpose(1, 2, 0) + 1) / 2, seed=0)
        assert np.abs((x.transpose(1, 2, 0) + 1) / 2 - small).mean() < 0.03


def test_validation_scores_the_stored_pairs():
    target, stored = _unique(32, 32), np.full((32, 32, 3), 7, np.uint8)
    out = DecodeBatch(["input", "target"], 16, augment=False, degrade="gaussian:2")(_batch([stored], [target]))
    assert np.all(_hwc_u8(out["input"][0]) == 7)


SYNTH = SimpleNamespace(name="d", kind="paired", degradation="random_gaussian:1-2.5", scale=1)
FOLDERS = SimpleNamespace(name="d", kind="paired", degradation=None, scale=1)
SR = SimpleNamespace(name="d", kind="paired", degradation=None, scale=4)
UNPAIRED = SimpleNamespace(name="d", kind="unpaired", degradation=None, scale=1)


@pytest.mark.parametrize("setting, manifest, made", [
    ("stored", SYNTH, None),
    ("auto", SYNTH, "random_gaussian:1-2.5"),
    ("auto", FOLDERS, None),
    ("auto", UNPAIRED, None),
    ("mix(gaussian:2,jpeg:40)", FOLDERS, "mix(gaussian:2,jpeg:40)"),
    ("chain(gaussian:1,down:4)", SR, "chain(gaussian:1,down:4)"),
    ("gaussian:1", UNPAIRED, "is unpaired"),
    ("down:2", FOLDERS, "inputs 2x smaller than their targets, and dataset 'd' holds same-size pairs"),
    ("gaussian:1", SR, "inputs of their targets' size, and dataset 'd' holds 4x super-resolution pairs"),
])
def test_the_setting_resolves_per_dataset_or_is_refused_with_the_reason(setting, manifest, made):
    if made and " " in made:
        with pytest.raises(Img2ImgError, match=made):
            synthesis(setting, manifest)
    else:
        assert synthesis(setting, manifest) == made


@pytest.mark.parametrize("value", ["blur", "gaussian:0", "mix(", ""])
def test_a_spec_that_does_not_parse_is_refused_by_the_config(value):
    from translator.variants import get_variant

    cfg = get_variant("nafnet").Config(degrade=value)
    with pytest.raises(ValueError, match="degrade must be stored or auto or a degradation spec"):
        cfg.validate()


@pytest.mark.parametrize("spec, scale", [("gaussian:1.5", 1), ("down:2", 2)])
def test_dead_leaves_replace_the_share_of_targets_asked_and_are_degraded_like_photos(spec, scale):
    """`--set dead_leaves=1`: every target is a synthetic image (never a cut of the stored photo),
    its input the spec applied to it; 0: every target is the photo's."""
    s, target = 24, _unique(80, 72)
    batch = _batch([np.zeros((80 // scale, 72 // scale, 3), np.uint8)] * 8, [target] * 8)
    leaves = DecodeBatch(["input", "target"], s, augment=True, degrade=spec, dead_leaves=1.0)(batch)
    photos = DecodeBatch(["input", "target"], s, augment=True, degrade=spec, dead_leaves=0.0)(batch)
    assert leaves["input"].shape == (8, 3, s, s) and leaves["target"].shape == (8, 3, scale * s, scale * s)
    for y in photos["target"]:
        tgt = _hwc_u8(y)
        tgt = tgt[:, ::-1] if tgt[0, 0, 1] > tgt[0, -1, 1] else tgt
        _where(tgt, target)  # a cut of the photo
    colours = set()
    for x, y in zip(leaves["input"], leaves["target"]):
        tgt = _hwc_u8(y)
        colours |= {tuple(c) for c in tgt.reshape(-1, 3)}
        assert not any(np.array_equal(tgt[:, ::d], target[t:t + scale * s, l:l + scale * s])
                       for d in (1, -1) for t in range(0, 80 - scale * s + 1) for l in range(0, 72 - scale * s + 1))
        made = degrade.apply(spec, (y.transpose(1, 2, 0) + 1) / 2, seed=0)
        # the input is the spec applied to the target (with its margin: the borders differ a little)
        assert np.abs((x.transpose(1, 2, 0) + 1) / 2 - made)[2:-2, 2:-2].mean() < 0.03
    assert len(colours) > 50  # many disks of random colours, not a few flat patches


def test_dead_leaves_need_inputs_synthesised_while_training():
    from translator.variants import get_variant

    with pytest.raises(ValueError, match="dead_leaves must be a share from 0 to 1"):
        get_variant("nafnet").Config(dead_leaves=1.5).validate()


@pytest.mark.parametrize("spec, scale", [("gaussian:1.5", 1), ("down:2", 2)])
def test_color_jitter_changes_the_target_and_the_input_is_made_from_the_jittered_target(spec, scale):
    """`--set color_jitter=0.5`: the targets are no longer the stored photo's colours, and each
    input is the spec applied to ITS target (a pair never mixes a jittered and a plain image)."""
    s, target = 24, _unique(80, 72)
    batch = _batch([np.zeros((80 // scale, 72 // scale, 3), np.uint8)] * 8, [target] * 8)
    out = DecodeBatch(["input", "target"], s, augment=True, degrade=spec, color_jitter=0.5)(batch)
    assert out["input"].shape == (8, 3, s, s) and out["target"].shape == (8, 3, scale * s, scale * s)
    cuts = 0
    for x, y in zip(out["input"], out["target"]):
        tgt = _hwc_u8(y)
        try:
            _where(tgt[:, ::-1] if tgt[0, 0, 1] > tgt[0, -1, 1] else tgt, target)
            cuts += 1
        except AssertionError:
            pass
        made = degrade.apply(spec, (y.transpose(1, 2, 0) + 1) / 2, seed=0)
        assert np.abs((x.transpose(1, 2, 0) + 1) / 2 - made)[2:-2, 2:-2].mean() < 0.03
    assert cuts < 8  # jittered targets are not plain cuts of the photo


@pytest.mark.parametrize("spec, scale, dtype", [("gaussian:1.5", 1, np.uint8), ("down:2", 2, np.uint8),
                                                ("down:4", 4, np.float32), ("gaussian:1.5", 1, np.float32)])
def test_a_jittered_pair_is_cut_and_made_exactly_as_a_plain_one(monkeypatch, spec, scale, dtype):
    """With the jitter itself replaced by the identity, `color_jitter` changes nothing: the same
    crop place, the same input made from the same (8-bit-rounded, for a uint8 photo) target,
    at every scale and for 16-bit (float) photos too: the pair cannot drift apart."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 56, 3), dtype=np.uint8)
    if dtype == np.float32:
        photo = (photo / 255 + rng.uniform(0, 1 / 512, photo.shape)).astype(np.float32)
    seeded = np.random.default_rng
    monkeypatch.setattr("jobs.data.decode.np.random.default_rng", lambda seed=None: seeded(5 if seed is None else seed))
    monkeypatch.setattr("jobs.data.decode.photometric.color_jitter", lambda img, strength, rng: img)
    plain = DecodeBatch(["input", "target"], 16 // scale * 2, augment=True, degrade=spec)
    jittered = DecodeBatch(["input", "target"], 16 // scale * 2, augment=True, degrade=spec, color_jitter=0.5)
    batch = _decoded(photo, 3)
    a, b = plain(batch), jittered(batch)
    for name in ("input", "target"):
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("kind, config, message", [
    ("paired", {"degrade": "stored"}, r"reads dataset 'd''s stored inputs; add --set degrade=SPEC \(e.g. degrade=random_gaussian:0.5-3\)"),
    ("unpaired", {}, r"dataset 'd' is unpaired: drop it"),
])
@pytest.mark.parametrize("key", ["dead_leaves", "color_jitter", "multiscale"])
def test_settings_that_work_on_synthesised_inputs_are_refused_where_none_are(key, kind, config, message):
    from jobs.training.driver import check_fit
    from jobs.training.spec import TrainSpec
    from registry.manifest import Manifest, Shard

    domains = (None,) if kind == "paired" else ("a", "b")
    manifest = Manifest("d", kind, "synth", "now", "here", 32, None, 0,
                        splits={"train": [Shard(f"train/{d}.parquet", 4, "0", 1, d) for d in domains], "val": []})
    variant = "nafnet" if kind == "paired" else "cyclegan"
    spec = TrainSpec(dataset="d", variant=variant, image_size=16, config={key: 0.3, **config})
    with pytest.raises(Img2ImgError, match=rf"^--set {key}=0.3 .*{message}$"):
        check_fit(spec, manifest)
    with pytest.raises(ValueError, match=f"{key} must be"):
        from translator.variants import get_variant

        get_variant("nafnet").Config(**{key: 1.5}).validate()


def test_a_jittered_8_bit_pairs_input_is_the_spec_applied_to_its_own_rounded_target():
    """The jittered photo is put on 8-bit levels BEFORE the input is made from it, as a stored
    photo is: away from the crop's edge every input pixel is exactly round(spec(target)), not
    one level off (made from the unrounded jitter: 9% of pixels were)."""
    photo = np.random.default_rng(0).integers(0, 256, (64, 56, 3), dtype=np.uint8)
    batch = _decoded(photo, 16)
    out = DecodeBatch(["input", "target"], 24, augment=True, degrade="gaussian:1.5", color_jitter=0.5)(batch)
    r = 6  # beyond the 1.5 px Gaussian's reach, the margin around the crop does not matter
    for x, y in zip(out["input"], out["target"]):
        target = (y.transpose(1, 2, 0) + 1) / 2
        np.testing.assert_allclose(target * 255, np.round(target * 255), atol=1e-3)  # a photo's 8-bit levels
        made = np.round(np.clip(degrade.apply("gaussian:1.5", target.astype(np.float32), seed=0), 0, 1) * 255)
        np.testing.assert_array_equal(np.round((x.transpose(1, 2, 0) + 1) / 2 * 255)[r:-r, r:-r], made[r:-r, r:-r])


def _ramp(h: int, w: int, dtype) -> np.ndarray:
    """Red rises 2 levels a column, green 2 a row: a downscaled ramp is a steeper ramp (bicubic
    resampling keeps straight lines), so a crop's slope tells the factor it was downscaled by."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    arr = np.stack([2 * cols, 2 * rows, np.full_like(rows, 100)], axis=-1).astype(np.float32)
    return arr.astype(np.uint8) if dtype == np.uint8 else arr / np.float32(255)


def _slopes(y: np.ndarray) -> tuple[float, float]:
    """(levels a column in red, levels a row in green) between pixels 6 and 18 of a 24 px target
    crop (CHW in [-1, 1]; a photo's border bends its ramp at the crop's edge), the crop turned
    back to red rising left to right."""
    img = (y.transpose(1, 2, 0) + 1) / 2 * 255
    if img[0, 0, 0] > img[0, -1, 0]:
        img = img[:, ::-1]
    return float((img[:, 18, 0] - img[:, 6, 0]).mean() / 12), float((img[18, :, 1] - img[6, :, 1]).mean() / 12)


@pytest.mark.parametrize("spec, scale, dtype", [("gaussian:1.5", 1, np.uint8), ("gaussian:1.5", 1, np.float32),
                                                ("down:2", 2, np.uint8)])
def test_multiscale_cuts_each_crop_from_the_photo_downscaled_and_makes_its_input_from_that(spec, scale, dtype):
    """`--set multiscale=0.5`: each target is a crop of the photo downscaled by its own factor in
    [0.5, 1] (a ramp 2 levels a pixel becomes 2-4), the same factor on both axes, and the input is
    the spec applied to THAT target, at every scale; without it every crop keeps the photo's scale."""
    n, s = 48, 24 // scale
    photo = _ramp(120, 120, dtype)
    batch = _decoded(photo, n)
    plain = DecodeBatch(["input", "target"], s, augment=True, degrade=spec)(batch)
    assert all(np.allclose(_slopes(y), 2, atol=0.01) for y in plain["target"])
    out = DecodeBatch(["input", "target"], s, augment=True, degrade=spec, multiscale=0.5)(batch)
    assert out["input"].shape == (n, 3, s, s) and out["target"].shape == (n, 3, scale * s, scale * s)
    slopes = [_slopes(y) for y in out["target"]]
    # Whole-pixel sizes let the two axes' factors differ by up to 0.071 in slope; an 8-bit crop
    # also rounds both ends of each 12 px slope to a level, up to 1/12 more per axis.
    tol = 0.1 + (2 / 12 if dtype == np.uint8 else 0)
    for across, down in slopes:
        assert 1.95 - tol / 2 <= across <= 4.1 + tol / 2 and abs(across - down) < tol
    assert max(a for a, _ in slopes) > 3.2 and min(a for a, _ in slopes) < 2.5  # factors across the range
    r = 6  # beyond the spec's reach, the margin around the crop does not matter
    for x, y in zip(out["input"], out["target"]):
        if dtype == np.uint8:  # the downscaled 8-bit photo is on 8-bit levels, as a stored one is
            np.testing.assert_allclose((y + 1) / 2 * 255, np.round((y + 1) / 2 * 255), atol=1e-3)
        made = np.clip(degrade.apply(spec, (y.transpose(1, 2, 0) + 1) / 2, seed=0), 0, 1)
        got = (x.transpose(1, 2, 0) + 1) / 2
        assert np.abs(got - made)[r // scale:-r // scale, r // scale:-r // scale].max() <= 1.01 / 255


@pytest.mark.parametrize("h, w, spec, scale", [(32, 32, "gaussian:1", 1), (40, 120, "gaussian:1", 1),
                                             (120, 40, "gaussian:1", 1), (30, 56, "down:2", 2)])
def test_multiscale_downscales_both_sides_alike_and_never_below_one_crop(h, w, spec, scale):
    """24 px target crops of a photo whose short side is 24-40 px: a factor that would leave the
    short side under one crop is raised to the smallest that keeps it, the same factor on the long
    side (the photo is never squeezed), never an error, at every scale. A float photo: its slopes
    carry no 8-bit rounding, so 0.1 bounds the whole-pixel sizes' own difference (0.071 at most)."""
    out = DecodeBatch(["input", "target"], 24 // scale, augment=True, degrade=spec, multiscale=0.9)(
        _decoded(_ramp(h, w, np.float32), 32))
    assert out["input"].shape == (32, 3, 24 // scale, 24 // scale) and out["target"].shape == (32, 3, 24, 24)
    slopes = [_slopes(y) for y in out["target"]]
    for across, down in slopes:
        assert abs(across - down) < 0.1 and across <= 2 * min(h, w) / 24 + 0.1
    assert max(a for a, _ in slopes) > 2 * min(h, w) / 24 - 0.1  # the clamp is reached


def test_a_tiny_multiscale_keeps_the_photos_own_pixels_where_the_factor_rounds_to_its_size():
    photo = _unique(80, 72)
    out = DecodeBatch(["input", "target"], 24, augment=True, degrade="gaussian:1", multiscale=1e-6)(_decoded(photo, 8))
    for y in out["target"]:
        tgt = _hwc_u8(y)
        t, l = _where(tgt[:, ::-1] if tgt[0, 0, 1] > tgt[0, -1, 1] else tgt, photo)  # a plain cut, not resampled
        assert t >= 0 and l >= 0


def test_multiscale_leaves_validation_stored_inputs_and_whole_images_alone():
    photo = _ramp(40, 40, np.uint8)
    batch = {"key": np.array(["0"]), "input": np.array([_png(photo)], dtype=object),
             "target": np.array([_png(photo)], dtype=object)}
    val = DecodeBatch(["input", "target"], 24, augment=False, degrade="gaussian:1", multiscale=0.5)(batch)
    stored = DecodeBatch(["input", "target"], 24, augment=True, multiscale=0.5)(batch)
    whole = DecodeBatch(["input", "target"], None, augment=True, degrade="gaussian:1", multiscale=0.5)(batch)
    assert whole["target"].shape == (1, 3, 40, 40)
    for out in (val, stored, whole):
        assert np.allclose(_slopes(out["target"][0]), 2, atol=0.01)


@pytest.mark.parametrize("value", [1, 1.5, -0.1])
def test_multiscale_outside_0_to_1_is_refused(value):
    from translator.variants import get_variant

    with pytest.raises(ValueError, match=r"multiscale must be (in \[0, 1\)|at least 0)"):
        get_variant("nafnet").Config(multiscale=value).validate()


def test_the_job_hands_every_synthesis_setting_to_its_training_stream(monkeypatch):
    """`--set multiscale/color_jitter/dead_leaves`: what the run was asked for is what its
    training stream's `DecodeBatch` gets (a setting dropped on the way would train without it)."""
    from jobs.training import driver
    from jobs.training.spec import TrainSpec
    from registry.manifest import Manifest, Shard

    calls = []
    monkeypatch.setattr(driver, "load_dataset", lambda name, split, settings, **kw: calls.append((split, kw)))
    monkeypatch.setattr(driver, "cache_budget", lambda share: 0)
    manifest = Manifest("d", "paired", "synth", "now", "here", 32, None, 0,
                        splits={"train": [Shard("train/0.parquet", 4, "0", 1, None)], "val": []})
    config = {"degrade": "gaussian:1", "multiscale": 0.4, "color_jitter": 0.2, "dead_leaves": 0.1}
    driver.datasets_for(TrainSpec(dataset="d", variant="nafnet", image_size=16, config=config), manifest,
                        SimpleNamespace(decode_cache_share=0.1), 16)
    (split, kw), = calls
    assert split == "train" and kw["degrade"] == "gaussian:1"
    assert (kw["multiscale"], kw["color_jitter"], kw["dead_leaves"]) == (0.4, 0.2, 0.1)
