"""The search-space grammar of `img2img tune --search`, parsed and checked before submission.

One `--search` names one hyper-parameter of the variant's Config and how to draw it:

- `lr=loguniform(1e-4,3e-3)`: a float drawn log-uniformly in [low, high) (0 < low < high);
- `decay_start=uniform(0.2,0.8)`: a float drawn uniformly in [low, high) (low < high);
- `nf=randint(8,32)`: an integer drawn uniformly in [low, high], both included (low < high);
- `width=choice(16,32)`: one of the values, drawn uniformly (at least one);
- `lr=grid(2e-3,1e-3)`: every value, in this order (Tune's grid search: each sample of the
  search runs every combination of the grid keys).

Each key is checked as `--set KEY=VALUE` is (`jobs.training.spec.TrainSpec.validate`, then one
training step on the meta device): a key the variant does not have, a value of the wrong type, a
value its Config refuses or its networks cannot be built or trained with, for every choice and
both ends of a range, alone and combined with the other keys' values. Pure: no Ray, MLflow or
store.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass

from cluster.errors import Img2ImgError
from translator.config import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
_FORM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$", re.S)
# Settings with a dedicated `train` option: searching one and passing that option would leave
# one of them unused.
OPTION_KEYS = {"lr": "--lr", "batch_size": "--batch-size", "image_size": "--image-size"}
MAX_COMBINATIONS = 64  # trials checked together before submission (each a few milliseconds)


@dataclass(frozen=True)
class Dimension:
    """One searched hyper-parameter: `key` (a field of the variant's Config), `kind` (one of
    `DISTRIBUTIONS`) and its `values`: (low, high) for a range, the candidates for choice/grid
    (numbers as float or int, other values as the strings given)."""

    key: str
    kind: str
    values: tuple
    source: str = ""  # the --search text as given

    @property
    def is_range(self) -> bool:
        return self.kind in ("loguniform", "uniform", "randint")

    def text(self) -> str:
        return self.source or f"{self.key}={self.kind}({','.join(str(v) for v in self.values)})"

    def tune_domain(self):
        """The Ray Tune search domain of this dimension (imported here: the grammar stays light)."""
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "randint":
            return tune.randint(self.values[0], self.values[1] + 1)  # Tune's upper bound is exclusive
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))


def _number(text: str):
    """'16' -> 16, '1e-3' -> 0.001, anything else -> the stripped string."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_dimension(text: str) -> Dimension:
    """`'lr=loguniform(1e-4,3e-3)'` -> Dimension. Checks the form only (the key and values
    against a variant: `check_space`). Raises Img2ImgError (one line) for a malformed text, an
    unknown distribution, a range without exactly two finite numbers or with low >= high
    (loguniform: also low <= 0), an empty choice/grid, a repeated candidate."""
    m = _FORM.match(text or "")
    if not m:
        raise Img2ImgError(f"--search {text!r}: expected KEY=DIST(ARGS), e.g. 'lr=loguniform(1e-4,3e-3)' or "
                           f"'width=choice(16,32)'; DIST is one of {', '.join(DISTRIBUTIONS)}")
    key, kind, args = m.group(1), m.group(2), m.group(3)
    if kind not in DISTRIBUTIONS:
        raise Img2ImgError(f"--search {text!r}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    parts = [a.strip() for a in args.split(",")] if args.strip() else []
    if any(not p for p in parts):
        raise Img2ImgError(f"--search {text!r}: an empty value between commas")
    values = tuple(_number(p) for p in parts)
    where = f"--search {text!r}"
    if kind in ("loguniform", "uniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise Img2ImgError(f"{where}: {kind} takes two numbers, low and high")
        low, high = values
        if not (math.isfinite(low) and math.isfinite(high)):
            raise Img2ImgError(f"{where}: the bounds must be finite numbers")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise Img2ImgError(f"{where}: randint takes two integers")
        if not low < high:
            raise Img2ImgError(f"{where}: empty range (low {low:g} must be below high {high:g})")
        if kind == "loguniform" and low <= 0:
            raise Img2ImgError(f"{where}: loguniform needs low > 0 (got {low:g})")
        values = (float(low), float(high)) if kind != "randint" else (low, high)
    else:
        if not values:
            raise Img2ImgError(f"{where}: {kind} needs at least one value")
        if len(set(map(str, values))) != len(values):
            raise Img2ImgError(f"{where}: a value is listed twice")
    return Dimension(key, kind, values, text.strip())


def parse_space(texts: list[str]) -> list[Dimension]:
    """Every `--search` -> Dimensions (parse_dimension); raises Img2ImgError when there is none
    or a key is searched twice."""
    if not texts:
        raise Img2ImgError("give at least one --search KEY=DIST(ARGS), e.g. --search 'lr=loguniform(1e-4,3e-3)'")
    dims = [parse_dimension(t) for t in texts]
    seen: set[str] = set()
    for d in dims:
        if d.key in seen:
            raise Img2ImgError(f"--search: {d.key!r} is searched twice; give one --search per key")
        seen.add(d.key)
    return dims


def check_space(dims: list[Dimension], spec) -> None:
    """Check each dimension against the request `spec` (a TrainSpec, the trials' common
    options): the key is a field of the variant's Config of a numeric type for a range
    (randint: int; uniform/loguniform: float), not also fixed by `--set` or its own option
    (`--lr` ...), and every candidate (every choice, both ends of a range), alone and in every
    combination with the other keys' candidates (`combinations`), passes the checks `--set
    KEY=VALUE` passes (`trial_problem`). Raises Img2ImgError naming the --search."""
    from translator.variants import get_variant  # the variant registry (torch): after the grammar

    try:
        config_cls = get_variant(spec.variant).Config
    except (KeyError, ValueError) as e:
        raise Img2ImgError(str(e).strip("'\"")) from None
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    base_problem = None
    for d in dims:
        where = f"--search {d.text()!r}"
        if d.key not in fields:
            raise Img2ImgError(f"{where}: {spec.variant} has no setting {d.key!r}; known: {', '.join(sorted(fields))}")
        if d.key in spec.config:
            raise Img2ImgError(f"{where}: {d.key} is also fixed by --set {d.key}={spec.config[d.key]}; give one of them")
        if d.key in OPTION_KEYS and getattr(spec, d.key, None) is not None:
            raise Img2ImgError(f"{where}: {d.key} is also fixed by {OPTION_KEYS[d.key]}; give one of them")
        kind = hints[d.key]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `float | None`: a float when searched
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if d.kind == "randint" and kind is not int:
            raise Img2ImgError(f"{where}: {d.key} is a {getattr(kind, '__name__', kind)}, randint draws integers; "
                               "use choice(...)" + (" or uniform/loguniform" if kind is float else ""))
        if d.kind in ("uniform", "loguniform") and kind is not float:
            raise Img2ImgError(f"{where}: {d.key} is a {getattr(kind, '__name__', kind)}, {d.kind} draws floats; "
                               + ("use randint(low,high) or choice(...)" if kind is int else "use choice(...)"))
        if base_problem is None:
            base_problem = trial_problem(spec, {}) or ""
        for value in d.values:
            problem = trial_problem(spec, {d.key: value})
            if problem and problem == base_problem:  # the common options' own problem, not this value's
                raise Img2ImgError(problem)
            if problem:
                raise Img2ImgError(f"{where}: {d.key}={value} is refused: {problem}")
    if len(dims) > 1:
        for combo in combinations(dims):
            problem = trial_problem(spec, combo)
            if problem:
                values = ", ".join(f"{k}={v}" for k, v in combo.items())
                raise Img2ImgError(f"--search: the trial {values} is refused: {problem}")


def trial_problem(spec, overrides: dict) -> str | None:
    """Why a trial of the request `spec` with `overrides` as `--set` values cannot train (the
    checks of `TrainSpec.validate`, then one training step at its crop size on the meta device,
    `jobs.training.crops.crop_problem` without a dataset), or None."""
    from jobs.training.crops import crop_problem

    trial = dataclasses.replace(spec, config={**spec.config, **overrides})
    try:
        trial.validate()
        return crop_problem(trial, None)
    except (Img2ImgError, ConfigError, ValueError) as e:
        return str(e)


def combinations(dims: list[Dimension], limit: int = MAX_COMBINATIONS) -> list[dict]:
    """Every combination of the dimensions' candidates (every choice or grid value, both ends of
    a range) as {key: value}, so settings valid alone but not together are caught (a crop size
    and a generator depth), when there are at most `limit`; beyond, each candidate with the
    other keys at their first one."""
    if math.prod(len(d.values) for d in dims) <= limit:
        return [dict(zip([d.key for d in dims], values)) for values in itertools.product(*(d.values for d in dims))]
    first = {d.key: d.values[0] for d in dims}
    return [{**first, d.key: v} for d in dims for v in d.values]


def trial_overrides(config: dict, dims: list[Dimension]) -> dict:
    """The searched keys' values of one trial (Tune's `config`), as `--set` overrides."""
    return {d.key: config[d.key] for d in dims if d.key in config}


def pbt_mutations(dims: list[Dimension]) -> dict:
    """PBT's `hyperparam_mutations`: a range as its Tune domain (perturbed by x0.8 / x1.2 or
    resampled), a choice or grid as its list of values (moved to a neighbour or resampled)."""
    return {d.key: d.tune_domain() if d.is_range else list(d.values) for d in dims}


def clip_to_space(config: dict, dims: list[Dimension]) -> dict:
    """PBT's explore step keeps a perturbed value inside its searched range (x1.2 could take
    ema_decay 0.9 past 1), so every value a trial trains with lies within what was checked
    before submission; integers stay integers."""
    out = dict(config)
    for d in dims:
        if d.is_range and d.key in out:
            low, high = d.values
            value = min(max(out[d.key], low), high)
            out[d.key] = int(round(value)) if d.kind == "randint" else float(value)
    return out


def check_pbt_space(dims: list[Dimension], spec) -> None:
    """PBT copies a trial's networks into another: a key whose candidates build different
    networks (a width, a depth) cannot be searched with it. Raises Img2ImgError naming it."""
    from translator.variants import get_variant

    def shapes(overrides: dict) -> dict:
        cfg = dataclasses.replace(spec, config={**spec.config, **overrides}).variant_config()
        v = get_variant(spec.variant).on_meta(cfg)
        return {f"{n}.{k}": tuple(t.shape) for n, m in v.networks().items() for k, t in m.state_dict().items()}

    for d in dims:
        first = shapes({d.key: d.values[0]})
        for value in d.values[1:]:
            if shapes({d.key: value}) != first:
                raise Img2ImgError(f"--search {d.text()!r}: {d.key} changes the networks ({d.key}={d.values[0]} and "
                                   f"{d.key}={value} differ), and --scheduler pbt copies one trial's networks into "
                                   "another; search it with --scheduler asha or fifo")
