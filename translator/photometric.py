"""Photometric augmentation of clean training images: brightness, contrast and saturation jitter.

The three adjustments are torchvision's `ColorJitter` ones (each factor drawn uniformly from
[1 - strength, 1 + strength], applied in a random order), written out in numpy because they run
in the data pipeline before the input is synthesised from the jittered image, so the pair stays
consistent: the degradation sees the jittered photo, not the stored one.
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma weights, what torchvision's rgb_to_grayscale uses
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _brightness(img: np.ndarray, f: float) -> np.ndarray:
    return img * np.float32(f)


def _contrast(img: np.ndarray, f: float) -> np.ndarray:
    mean = np.float32((img @ LUMA).mean())  # blend with the image's mean grey, as torchvision does
    return mean + np.float32(f) * (img - mean)


def _saturation(img: np.ndarray, f: float) -> np.ndarray:
    grey = (img @ LUMA)[..., None]
    return grey + np.float32(f) * (img - grey)


ADJUSTMENTS = (_brightness, _contrast, _saturation)


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation changes of one RGB image.

    img: (H, W, 3) float32 in [0, 1]. strength: in [0, 1); each factor is drawn from
    [1 - strength, 1 + strength] and the three are applied in a random order, each result clipped
    to [0, 1] (torchvision.transforms.ColorJitter(brightness=s, contrast=s, saturation=s)).
    -> (H, W, 3) float32 in [0, 1]; `img` itself when strength is 0. Raises ValueError for a
    strength outside [0, 1) or an image that is not HxWx3.
    """
    if not 0 <= strength < 1:
        raise ValueError(f"color_jitter must be in [0, 1), got {strength}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"color_jitter takes an HxWx3 image, got shape {img.shape}")
    if strength == 0:
        return img
    out = img.astype(np.float32, copy=False)
    for i in rng.permutation(len(ADJUSTMENTS)):
        out = np.clip(ADJUSTMENTS[i](out, rng.uniform(1 - strength, 1 + strength)), 0.0, 1.0)
    return out.astype(np.float32, copy=False)
