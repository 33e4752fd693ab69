"""Degradations and metrics agree with the scipy / scikit-image references."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from translator import degrade
from translator.metrics import psnr, ssim


def photo(h=48, w=40, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_gaussian_blur_matches_scipy_reflect(sigma):
    img = photo()
    ours = degrade.apply(f"gaussian:{sigma}", img, seed=0)
    ref = np.stack([gaussian_filter(img[..., c].astype(np.float64), sigma, mode="reflect") for c in range(3)], -1)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("spec", ["random_gaussian:0.5-3", "resize:4", "noise:10", "jpeg:30",
                                  "mix(gaussian:1.5,resize:4)", "chain(gaussian:1,noise:5)",
                                  "mix(chain(resize:2,jpeg:50),random_gaussian:1-2)",
                                  # the other translations: colourisation, sketches, damaged photos
                                  "gray", "edges", "edges:2", "holes:0.2", "scratches:8",
                                  "chain(gray,noise:5)", "mix(holes:0.1,scratches:4)",
                                  "second_order", "mix(second_order,random_gaussian:0.5-3)"])
def test_degradations_are_seeded_shape_preserving_and_degrade(spec):
    img = photo(64, 64)
    a, b = degrade.apply(spec, img, seed=7), degrade.apply(spec, img, seed=7)
    assert a.shape == img.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0 + 1e-6
    assert np.abs(a - img).mean() > 1e-3


def test_random_degradations_vary_with_seed():
    img = photo(64, 64)
    outs = {degrade.apply("random_gaussian:0.5-3", img, seed=s).tobytes() for s in range(4)}
    assert len(outs) == 4
    picks = {degrade.apply("mix(gaussian:2,resize:4)", img, seed=s).tobytes() for s in range(12)}
    assert len(picks) == 2


def test_second_order_draws_a_different_chain_each_time_and_its_kernels_are_real_blurs():
    from translator import second_order

    img = photo(64, 64)
    assert len({degrade.apply("second_order", img, seed=s).tobytes() for s in range(6)}) == 6
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = second_order.random_kernel(rng, second_order.FIRST.sigma)
        assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-9 and k.min() >= 0
        assert k[10, 10] == k.max()  # centred, peaked in the middle
    # an isotropic Gaussian kernel through the FFT convolution is the separable blur
    g = degrade.gaussian_kernel(1.5)
    iso = np.zeros((21, 21))
    r = len(g) // 2
    iso[10 - r:11 + r, 10 - r:11 + r] = np.outer(g, g)
    assert np.abs(second_order.convolve(img, iso) - degrade.gaussian_blur(img, 1.5)).max() < 1e-5


@pytest.mark.parametrize("bad", ["", "blur:2", "second_order:2", "gaussian:x", "gaussian:-1", "mix(gaussian:1", "jpeg:0",
                                 "random_gaussian:3-1", "mix()"])
def test_bad_specs_are_refused_clearly(bad):
    with pytest.raises(degrade.DegradationError):
        degrade.parse(bad)


def test_psnr_and_ssim_match_skimage_on_rgb():
    clean = photo(64, 72, seed=1)
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    blurred = degrade.apply("gaussian:2", clean, 0)
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    for other in (noisy, blurred):
        ref_psnr = peak_signal_noise_ratio(clean, other, data_range=1.0)
        ref_ssim = structural_similarity(clean, other, channel_axis=-1, data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(psnr(t(other), t(clean))) == pytest.approx(ref_psnr, abs=1e-3)
        assert float(ssim(t(other), t(clean))) == pytest.approx(ref_ssim, abs=1e-3)


def test_metrics_are_per_image():
    x = torch.rand(3, 3, 32, 32)
    assert psnr(x, x.clone().clamp(0, 1) * 0.9).shape == (3,)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


# ---- the other translations: colourisation, sketches, damaged photos --------------------------

def test_gray_is_luminance_in_every_channel():
    img = photo()
    out = degrade.apply("gray", img, seed=0)
    assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 1], out[..., 2])
    expected = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.abs(out[..., 0] - expected).max() < 1e-5


def test_edges_draw_black_lines_on_white_where_the_photo_has_edges():
    img = np.zeros((64, 64, 3), np.float32)
    img[:, 32:] = 1.0  # one vertical edge
    out = degrade.apply("edges", img, seed=0)
    assert out[:, :24].min() == 1.0 and out[:, 40:].min() == 1.0  # flat areas stay white paper
    assert out[:, 30:34].min() < 0.05  # the edge is a dark line
    # the same photo at other seeds gives the same drawing: edges have no randomness
    assert np.array_equal(out, degrade.apply("edges", img, seed=99))


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6])
def test_holes_cover_at_least_the_fraction_with_white(fraction):
    img = photo(96, 96) * 0.9  # no white pixels before
    out = degrade.apply(f"holes:{fraction}", img, seed=1)
    covered = (out == 1.0).all(-1).mean()
    assert fraction <= covered < fraction + 0.25
    assert np.array_equal(out[out != 1.0], img[out != 1.0])  # the rest is untouched


def test_scratches_are_thin_and_more_strokes_damage_more():
    img = photo(128, 128) * 0.9
    few = (degrade.apply("scratches:2", img, seed=5) == 1.0).all(-1).mean()
    many = (degrade.apply("scratches:40", img, seed=5) == 1.0).all(-1).mean()
    assert 0 < few < many < 0.5


@pytest.mark.parametrize("spec", ["holes:1.5", "holes:0", "scratches:2.5", "scratches:5000", "gray:3",
                                  "edges:-1", "gaussian:inf", "gaussian:nan", "edges:x"])
def test_bad_translation_specs_are_refused(spec):
    with pytest.raises(degrade.DegradationError):
        degrade.parse(spec)
