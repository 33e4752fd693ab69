"""Typed variant configs: plain dataclasses, overridable from `key=value` strings (`--set`)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from translator import degrade


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type in a variant config."""


LR_POLICIES = ("constant", "linear", "cosine")
AUGMENTATIONS = ("hflip", "d4")
DEGRADE_SOURCES = ("stored", "auto")  # TrainConfig.degrade's values besides a spec


@dataclasses.dataclass
class TrainConfig:
    """The fields every variant's config has: the training job and the LR schedule read them.

    A variant's config subclasses this (a plain dataclass), overrides the defaults that differ
    and adds its own hyper-parameters; every field is settable from the CLI with `--set key=value`.

    - `lr`: base learning rate of every optimiser (the schedule multiplies it);
    - `beta1`: Adam's first-moment decay (0.5 for the GANs, as in pix2pix/CycleGAN);
    - `lr_policy`: `constant`, `linear` (constant, then linear to 0 from `decay_start` of the run,
      the pix2pix/CycleGAN schedule) or `cosine` (NAFNet);
    - `decay_start`: fraction of the run in [0, 1) after which `linear` decays;
    - `batch_size`: samples per optimisation step PER WORKER (data-parallel: the global batch is
      `batch_size x workers`);
    - `image_size`: side in pixels of the square training crops (the job random-crops to it);
    - `augment`: `hflip` (random horizontal flips, pix2pix's) or `d4` (flips and 90-degree turns:
      all 8 orientations, BasicSR's for paired restoration, where a photo's "up" does not matter);
    - `ema_decay`: 0 (off) or the decay in (0, 1) of an exponential moving average of the
      generator's weights (Polyak averaging; the EMA copy is what validation scores and what is
      registered and served; its decay warms up as min(decay, (1 + n) / (10 + n)) after n updates);
    - `degrade`: where a paired dataset's training inputs come from: `stored` (the ingested pairs
      as they are), a degradation spec (`translator.degrade`, e.g. `random_gaussian:0.5-3`:
      synthesised from each training crop's target with a fresh random draw every time, so a few
      photos give endless distinct pairs), or `auto` (the dataset's own spec when it was
      synthesised with `--degrade`, else `stored`). Validation always scores the stored pairs;
    - `dead_leaves`: share (0-1) of training crops whose target is a synthetic dead-leaves image
      (`translator.synthetic`) instead of a stored one, its input synthesised by `degrade` (which
      must then be a spec): sharp edges and fine texture at every scale, for a few photos;
    - `color_jitter`: strength in [0, 1) of random brightness, contrast and saturation changes of
      each training crop's target before its input is synthesised (`translator.photometric`,
      torchvision's ColorJitter factors; `degrade` must then be a spec): more colours and
      exposures from the same photos;
    - `multiscale`: in [0, 1); each training crop is cut from its photo downscaled by a factor
      drawn uniformly from [1 - multiscale, 1] before its input is synthesised (`degrade` must
      then be a spec): the same photos' detail at more scales.

    The defaults are the pix2pix/CycleGAN papers' (Adam 2e-4, beta1 0.5, batch 1, 256 px crops);
    a variant's config restates only what differs.
    """

    # Settings that change which crop sizes the networks accept, with the values they take
    # (e.g. {"netG": UNETS}): the training job's size check suggests them as fixes.
    SIZE_SETTINGS: typing.ClassVar[dict[str, tuple[str, ...]]] = {}
    # Settings of the training data, not of the networks: a run started from another run's
    # networks on new data (`--init-from`) does not take them from it.
    DATA_SETTINGS: typing.ClassVar[tuple[str, ...]] = ("degrade", "dead_leaves", "color_jitter", "multiscale")

    lr: float = 2e-4
    beta1: float = 0.5
    lr_policy: str = "constant"
    decay_start: float = 0.5
    batch_size: int = 1
    image_size: int = 256
    augment: str = "hflip"
    ema_decay: float = 0.0
    degrade: str = "stored"
    dead_leaves: float = 0.0
    color_jitter: float = 0.0
    multiscale: float = 0.0

    def validate(self) -> None:
        """Raise ValueError for values no variant can train with; subclasses extend it."""
        for f in dataclasses.fields(self):  # inf/nan pass every `> 0` test below, then train to nan
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
            # counts and widths (layers, blocks, filters, pool size) and loss weights are never negative
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and value < 0 and (isinstance(value, int) or f.name.startswith("lambda_")):
                raise ValueError(f"{f.name} must be at least 0, got {value}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.degrade not in DEGRADE_SOURCES:
            try:
                degrade.parse(self.degrade)
            except degrade.DegradationError as e:
                raise ValueError(f"degrade must be {' or '.join(DEGRADE_SOURCES)} or a degradation spec: {e}") from None
        if not 0 <= self.dead_leaves <= 1:
            raise ValueError(f"dead_leaves must be a share from 0 to 1, got {self.dead_leaves}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if not 0 <= self.multiscale < 1:
            raise ValueError(f"multiscale must be in [0, 1), got {self.multiscale}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be 0 (off) or in (0, 1), got {self.ema_decay}")
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"lr_policy must be one of {', '.join(LR_POLICIES)}, got {self.lr_policy!r}")
        if not 0 <= self.decay_start < 1:
            raise ValueError(f"decay_start must be in [0, 1), got {self.decay_start}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr:g}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 px, got {self.image_size}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0] if args else str, key) for v in value]
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return bool(value)
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {annotation.__name__}, got {value!r}") from None
    return value


def make_config(cls: type, overrides: dict[str, Any] | None = None):
    """Build `cls` from its defaults plus `overrides` (values may be strings from the CLI)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}")
        values[key] = _coerce(value, hints[key], key)
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["lr=1e-3", "width=32"]` -> `{"lr": "1e-3", "width": "32"}`."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
