"""Is the training crop size one the variant's networks and the dataset's images allow?

Checked before submission (`jobs.training.driver.plan_job`): otherwise the workers fail after start-up
(and again on each retry) with "stored images are 96x96, smaller than --image-size 256" or a
convolution's output-size error. The networks' own rules are not restated here: each candidate
size is tried by `Variant.dry_run` (one training step on the meta device, shapes only), so a
new variant or network is checked without touching this module.
"""

from __future__ import annotations

import dataclasses
import warnings

from cluster.errors import Img2ImgError
from jobs.training.spec import TrainSpec
from translator.variants import get_variant, variant_names

MIN_SIZE = 8  # TrainConfig.validate's floor
TRIES = 8  # candidate sizes tried each way when looking for a fix (each a few milliseconds)


def _fits(cls, cfg, size: int) -> bool:
    return size >= MIN_SIZE and cls.dry_run(cfg, size) is None


def largest_fit(cls, cfg, cap: int) -> int | None:
    """The largest crop side (px) <= `cap` that a Variant class `cls` with config `cfg` trains on,
    `cap` itself first (a generator that pads, like nafnet's, takes any side), then stepping down
    by its generator's size multiple; None when none of `TRIES` candidates (or none above
    MIN_SIZE) does."""
    if _fits(cls, cfg, cap):
        return cap
    m = cls.on_meta(cfg).multiple
    size = cap - cap % m
    for _ in range(TRIES):
        if size < MIN_SIZE:
            return None
        if _fits(cls, cfg, size):
            return size
        size -= m
    return None


def smallest_fit_above(cls, cfg, size: int, limit: int | None) -> int | None:
    """The smallest crop side (px) > `size`, and <= `limit` when given, that a Variant class `cls`
    with config `cfg` trains on; None when none of `TRIES` candidates does."""
    m = cls.on_meta(cfg).multiple
    cand = (size // m + 1) * m
    for _ in range(TRIES):
        if limit is not None and cand > limit:
            return None
        if _fits(cls, cfg, cand):
            return cand
        cand += m
    return None


def _size_fix(cls, cfg, size: int, cap: int) -> str | None:
    """The largest crop <= cap with these settings or one SIZE_SETTINGS change, as options."""
    best: tuple[int, str] | None = None
    found = largest_fit(cls, cfg, cap)
    if found:
        best = (found, "")
    for key, values in cfg.SIZE_SETTINGS.items():
        for value in values:
            if value == getattr(cfg, key):
                continue
            alt = largest_fit(cls, dataclasses.replace(cfg, **{key: value}), cap)
            if alt and (best is None or alt > best[0]):
                best = (alt, f"--set {key}={value}")
    if best is None:
        return None
    found, setting = best
    return " ".join(p for p in (f"--image-size {found}" if found != size else "", setting) if p)


def crop_problem(spec: TrainSpec, stored: int | None, dataset: str = "the dataset", square: bool = True) -> str | None:
    """None when the request's training crops fit, else one line naming the fix. `stored`: the
    side in px of the dataset's square images (manifest `image_size`), or with `square=False`
    the shortest side of its smallest training image (a dataset that kept its images' sizes);
    None: unknown, so only the networks are checked."""
    with warnings.catch_warnings():  # meta-device builds of odd settings warn (zero-element layers)
        warnings.simplefilter("ignore")
        return _crop_problem(spec, stored, dataset, square)


def _crop_problem(spec: TrainSpec, stored: int | None, dataset: str, square: bool) -> str | None:
    cls = get_variant(spec.variant)
    cfg = spec.variant_config()
    size = cfg.image_size
    given = spec.image_size is not None or "image_size" in spec.config
    source = f"--image-size {size}" if given else f"{spec.variant}'s default --image-size {size}"
    problem = cls.dry_run(cfg, size)
    too_big = stored is not None and size > stored
    if problem is None and not too_big:
        return None
    fixes = []
    if not too_big:
        up = smallest_fit_above(cls, cfg, size, stored)
        if up:
            fixes.append(f"--image-size {up}")
    down = _size_fix(cls, cfg, size, min(size, stored) if stored else size)
    if down:
        fixes.append(down)
    fix = f"use {' or '.join(fixes)}" if fixes else ""
    m = cls.on_meta(cfg).multiple
    if too_big:
        if problem is None:  # the networks take this size: larger stored images would do
            fix = f"{fix}, or re-ingest with --size {size}" if fix else f"re-ingest with --size {size}"
        stores = f"stores {stored}x{stored} images" if square else \
            f"keeps its images' sizes and its smallest training image is {stored} px on its short side"
        reason = f"{dataset} {stores}, smaller than the {size} px training crops ({source})"
    else:
        what = ", ".join(f"{k} {getattr(cfg, k)}" for k in cfg.SIZE_SETTINGS)
        rule = (f"its generator{f' ({what})' if what else ''} takes sides that are a multiple of {m} px"
                if size % m else f"a training step fails at this size ({problem})")
        reason = f"{spec.variant} cannot train on {size} px crops ({source}): {rule}"
    if not fix and problem is not None and size % m == 0:
        # no size trains: the settings are the problem (e.g. --set ngf=0), not the crop
        return f"{reason}, and no other crop size trains either: check the --set values"
    return f"{reason}; {fix or 'choose another --image-size'}"


def scale_problem(spec: TrainSpec, data_scale: int, dataset: str = "the dataset") -> str | None:
    """None when the variant's output/input scale (its descriptor's, e.g. `--set scale=4`) is the
    dataset's (manifest `scale`: 1 for same-size pairs, N for N-times super-resolution pairs), else
    one line naming the fix."""
    cls = get_variant(spec.variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scale = cls.on_meta(spec.variant_config()).descriptor.scale
    if scale == data_scale:
        return None
    if data_scale > 1 and scale == 1:
        sr = [n for n in variant_names(paired=True) if "scale" in {f.name for f in dataclasses.fields(get_variant(n).Config)}]
        return (f"{dataset} holds {data_scale}x super-resolution pairs, and {spec.variant} makes images of its "
                f"input's size; use {' or '.join(f'--variant {n}' for n in sr)} --set scale={data_scale}")
    if data_scale == 1:
        return (f"{spec.variant} with scale {scale} makes images {scale}x larger, but {dataset} holds same-size "
                f"pairs; ingest pairs with down:{scale} (e.g. --degrade down:{scale}) or LR/ + HR/ folders")
    return (f"{spec.variant} with scale {scale} makes {scale}x images, but {dataset} holds {data_scale}x pairs "
            f"(its manifest's scale); use --set scale={data_scale}")


def check_crop(spec: TrainSpec, stored: int | None, dataset: str = "the dataset", square: bool = True) -> None:
    """Raise Img2ImgError with `crop_problem`'s line when the crops do not fit."""
    problem = crop_problem(spec, stored, dataset, square)
    if problem:
        raise Img2ImgError(problem)
