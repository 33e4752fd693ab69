"""Dead-leaves images (translator.synthetic): shape, range, colour or grey, repeatable from a seed,
edges at every scale, bad sizes refused."""

import numpy as np
import pytest

from translator.synthetic import dead_leaves


def test_an_image_is_float32_rgb_in_0_1_and_repeats_from_its_seed():
    a = dead_leaves(64, np.random.default_rng(3))
    b = dead_leaves(64, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b)
    assert not np.array_equal(a, dead_leaves(64, np.random.default_rng(4)))


@pytest.mark.parametrize("grey, is_grey", [(1.0, True), (0.0, False)])
def test_grey_images_have_equal_channels(grey, is_grey):
    img = dead_leaves(48, np.random.default_rng(0), grey=grey)
    assert (np.ptp(img, axis=2).max() < 1e-6) == is_grey


def test_edges_at_small_and_large_scales():
    """Fine detail (neighbouring pixels differ) and large flat disks (a 4x downscale still has
    strong edges) in the same image: the power law of the radii."""
    img = dead_leaves(128, np.random.default_rng(1), grey=0.0)
    fine = np.abs(np.diff(img, axis=1)).mean()
    coarse = img.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert fine > 0.02 and np.abs(np.diff(coarse, axis=1)).mean() > 0.02
    flat = (np.abs(np.diff(img, axis=1)) < 1e-6).all(axis=2).mean()
    assert flat > 0.3  # inside the disks


@pytest.mark.parametrize("size, kwargs, message", [
    (1, {}, "at least 2 px"), (32, {"r_min": 0}, "0 < r_min <= r_max"), (32, {"r_min": 5, "r_max": 2}, "r_min"),
])
def test_bad_sizes_are_refused(size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        dead_leaves(size, np.random.default_rng(0), **kwargs)
