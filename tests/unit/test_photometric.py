"""Colour jitter of clean training crops (`--set color_jitter=S`): torchvision ColorJitter's
brightness/contrast/saturation factors, the synthesised input made from the jittered target."""

import numpy as np
import pytest

from translator.photometric import LUMA, color_jitter


def _photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, (16, 12, 3)).astype(np.float32)


def test_strength_0_is_the_image_itself_and_any_strength_stays_an_image_in_range():
    img = _photo()
    assert color_jitter(img, 0.0, np.random.default_rng(0)) is img
    for seed in range(20):
        out = color_jitter(img, 0.9, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_the_same_draw_gives_the_same_jitter_and_draws_differ():
    img = _photo()
    a = color_jitter(img, 0.4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, color_jitter(img, 0.4, np.random.default_rng(7)))
    assert not np.allclose(a, color_jitter(img, 0.4, np.random.default_rng(8)))


@pytest.mark.parametrize("strength", [0.1, 0.4])
def test_the_mean_brightness_moves_within_the_strength_asked(strength):
    """A mid-grey photo clipped nowhere: contrast and saturation keep its mean grey, brightness
    scales it by at most 1 +- strength."""
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[::2] = 0.45
    means = [float(color_jitter(img, strength, np.random.default_rng(s)).mean()) for s in range(200)]
    ratio = np.array(means) / img.mean()
    assert ratio.min() >= 1 - strength - 1e-4 and ratio.max() <= 1 + strength + 1e-4
    assert ratio.max() - ratio.min() > strength  # the factors really are drawn across the range


def test_a_grey_image_stays_grey():
    """Saturation blends with the pixel's own grey and brightness/contrast act on all channels
    alike: no colour cast appears."""
    img = np.repeat(np.linspace(0.1, 0.9, 64, dtype=np.float32).reshape(8, 8, 1), 3, axis=2)
    out = color_jitter(img, 0.5, np.random.default_rng(3))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)
    assert abs(LUMA.sum() - 1) < 1e-6


@pytest.mark.parametrize("strength, shape, message", [
    (1.0, (4, 4, 3), r"color_jitter must be in \[0, 1\), got 1.0"),
    (-0.1, (4, 4, 3), r"color_jitter must be in \[0, 1\), got -0.1"),
    (0.2, (4, 4), r"color_jitter takes an HxWx3 image, got shape \(4, 4\)"),
    (0.2, (4, 4, 4), r"color_jitter takes an HxWx3 image, got shape \(4, 4, 4\)"),
])
def test_bad_strengths_and_shapes_are_refused(strength, shape, message):
    with pytest.raises(ValueError, match=message):
        color_jitter(np.zeros(shape, np.float32), strength, np.random.default_rng(0))
