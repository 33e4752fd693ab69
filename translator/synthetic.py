"""Synthetic training images: the dead-leaves model.

A dead-leaves image is a stack of opaque disks of random colours whose radii follow a power law
(density proportional to r^-3 between `r_min` and `r_max`): it is scale-invariant and has the
edge statistics and 1/f^2 power spectrum of natural images (Lee, Mumford & Huang, "Occlusion
models for natural images", IJCV 2001). Mixed into restoration training it teaches sharp edges
and fine texture at every scale that a handful of photos lack (Achddou, Gousseau & Ladjal,
"Synthetic images as a regularity prior for image restoration neural networks", SSVM 2021).
"""

from __future__ import annotations

import cv2
import numpy as np

SUBPIXEL_BITS = 4  # cv2.circle's fractional bits: centres and radii to 1/16 px
COVER = 3.0  # disks' total area / the image's: a pixel no disk covers (e^-3, 5%) shows the first colour


def _radii(n: int, r_min: float, r_max: float, rng: np.random.Generator) -> np.ndarray:
    """n radii with density proportional to r^-3 on [r_min, r_max] (inverse CDF)."""
    u = rng.random(n)
    return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 1.0, r_max: float | None = None,
                grey: float = 0.3) -> np.ndarray:
    """One dead-leaves image -> (size, size, 3) float32 in [0, 1].

    Disks are painted back to front, each over the ones before it, anti-aliased, with radii
    r^-3-distributed on [r_min, r_max] px (default r_max: size / 2) and enough of them that the
    first are covered (COVER). A share `grey` (0-1) of images is grey (R = G = B), as are
    scanned documents and texture photos; the others have colours drawn uniformly in RGB.
    Raises ValueError for size < 2 or r_min not in (0, r_max]."""
    if size < 2:
        raise ValueError(f"a dead-leaves image needs a size of at least 2 px, got {size}")
    r_max = float(r_max if r_max is not None else size / 2)
    if not 0 < r_min <= r_max:
        raise ValueError(f"dead leaves need 0 < r_min <= r_max, got {r_min} and {r_max}")
    # E[pi r^2] under the r^-3 density: pi * 2 ln(r_max / r_min) / (r_min^-2 - r_max^-2)
    mean_area = (np.pi * 2 * np.log(r_max / r_min) / (r_min ** -2 - r_max ** -2)) if r_max > r_min else np.pi * r_min ** 2
    n = max(16, int(COVER * size * size / mean_area))
    radii = _radii(n, r_min, r_max, rng)
    centres = rng.uniform(-0.1 * size, 1.1 * size, (n, 2))
    is_grey = rng.random() < grey
    colours = np.repeat(rng.random((n, 1)), 3, axis=1) if is_grey else rng.random((n, 3))
    img = np.empty((size, size, 3), np.float32)
    img[:] = colours[0]
    one = 1 << SUBPIXEL_BITS
    for (x, y), r, c in zip(centres, radii, colours):
        cv2.circle(img, (int(x * one), int(y * one)), max(1, int(r * one)), c.tolist(), -1, cv2.LINE_AA,
                   SUBPIXEL_BITS)
    return np.clip(img, 0.0, 1.0)
