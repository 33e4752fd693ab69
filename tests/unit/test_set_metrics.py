"""The set's PSNR (pooled MSE) and the gain read from it: pairs the degradation left unchanged
(flat crops: sky, solid backgrounds) cannot flip a good model's gain, as the per-image mean does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jobs.evaluation.driver import set_metrics
from translator.metrics import PSNR_DEFINITION, UNCHANGED_MSE, SetTally, psnr, squared_error

LEVEL = 1 / 255


def _texture(seed: int, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, 3, size, size))).float()


def _noisy(t: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    noise = torch.from_numpy(np.random.default_rng(seed).normal(0, sigma, t.shape)).float()
    return (t + noise).clamp(0, 1)


def _set(real: int, flat: int, out_sigma: float = 0.05):
    """(output, input, target) triples: `real` textured pairs the model improves (input noise
    0.10 -> output `out_sigma`: 20*log10(0.10 / out_sigma) dB, 6 dB by default) and `flat` solid crops the degradation left unchanged, where the
    model moves every other pixel by one 8-bit level (invisible)."""
    pairs = []
    for i in range(real):
        target = _texture(i)
        pairs.append((_noisy(target, out_sigma, 100 + i), _noisy(target, 0.10, 200 + i), target))
    for i in range(flat):
        target = torch.full((1, 3, 32, 32), 0.2 + 0.1 * i)
        out = target.clone()
        out[..., ::2] += LEVEL
        pairs.append((out, target.clone(), target))
    return pairs


def _old_mean_gain(pairs) -> float:
    """The per-image mean of PSNR (BasicSR's, and this project's former definition)."""
    return float(np.mean([float(psnr(o, t)) - float(psnr(i, t)) for o, i, t in pairs]))


@pytest.mark.parametrize("real,flat,out_sigma", [(10, 1, 0.05), (10, 3, 0.05), (4, 4, 0.05),
                                                 (90, 6, 0.075)])  # the last: 6 of 96 crops, +2.5 dB on the rest
def test_unchanged_pairs_cannot_flip_the_gain(real, flat, out_sigma):
    pairs = _set(real, flat, out_sigma)
    real_gain = 20 * math.log10(0.10 / out_sigma)
    tally = SetTally()
    for o, i, t in pairs:
        tally.add(o, t, i)
    m = tally.summary()
    assert _old_mean_gain(pairs) < 0  # the old definition calls this good model WORSE than its input
    assert m["gain_db"] > 0.8 * real_gain  # pooled: the real pairs' gain, barely diluted by the flat ones
    assert m["unchanged"] == flat and m["improved_share"] == 1.0
    assert m["median_gain_db"] == pytest.approx(real_gain, abs=0.6)  # over the changed pairs only
    assert m["gain_db"] == pytest.approx(m["psnr"] - m["input_psnr"])


def test_pooled_psnr_is_the_psnr_of_the_mse_over_every_pixel_of_the_set():
    pairs = _set(5, 2) + [(_noisy(_texture(9, 48), 0.02, 1), _noisy(_texture(9, 48), 0.08, 2), _texture(9, 48))]
    tally = SetTally()
    for o, i, t in pairs:
        tally.add(o, t, i)
    sse = sum(float(squared_error(o, t)) for o, _, t in pairs)
    values = sum(t.numel() for _, _, t in pairs)  # images of different sizes weigh by their pixels
    assert tally.summary()["psnr"] == pytest.approx(10 * math.log10(values / sse))
    # a set of ONE image: the per-image PSNR
    one = SetTally()
    one.add(*pairs[0][::2], pairs[0][1])
    assert one.summary()["psnr"] == pytest.approx(float(psnr(pairs[0][0], pairs[0][2])))


def test_sums_add_across_workers_and_a_near_identical_pair_is_counted_unchanged():
    pairs = _set(6, 2)
    whole, a, b = SetTally(), SetTally(), SetTally()
    for k, (o, i, t) in enumerate(pairs):
        whole.add(o, t, i)
        (a if k % 2 else b).add(o, t, i)
    summed = SetTally.from_sums({k: a.sums()[k] + b.sums()[k] for k in a.sums()})  # what the all-reduce does
    got, want = summed.summary(), whole.summary()
    for k in ("psnr", "input_psnr", "gain_db", "ssim", "input_ssim", "improved_share", "unchanged"):
        assert got[k] == pytest.approx(want[k]), k
    near = SetTally()  # one pixel value off by one level: nothing visible to undo
    target = torch.full((1, 3, 16, 16), 0.5)
    inp = target.clone()
    inp[0, 0, 0, 0] += LEVEL
    assert float(squared_error(inp, target)) / inp.numel() < UNCHANGED_MSE
    near.add(target.clone(), target, inp)
    assert near.summary()["unchanged"] == 1 and math.isnan(near.summary()["improved_share"])


def test_eval_rows_give_the_same_set_metrics_as_training_validation():
    """`jobs.evaluation.driver.set_metrics` (the eval job, from per-image rows) and `SetTally.add` (training's
    validation, from tensors) agree: the gate may compare one with the other."""
    from translator.metrics import ssim

    pairs = _set(5, 2)
    tally = SetTally()
    rows = []
    for o, i, t in pairs:
        tally.add(o, t, i)
        rows.append({"values": t.numel(), "sse": float(squared_error(o, t)), "input_sse": float(squared_error(i, t)),
                     "ssim": float(ssim(o, t)), "input_ssim": float(ssim(i, t))})
    from_rows, from_tensors = set_metrics(rows, paired=True), tally.summary()
    assert from_rows.keys() == from_tensors.keys()
    for k, v in from_tensors.items():
        assert from_rows[k] == pytest.approx(v), k
    assert PSNR_DEFINITION == "pooled-mse"


def test_an_empty_set_is_refused():
    with pytest.raises(ValueError, match="no images"):
        SetTally().summary()
