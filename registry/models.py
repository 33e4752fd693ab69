"""The MLflow model registry: list versions, resolve a reference (`registry.refs`: `NAME@alias`,
`NAME/VERSION`, `NAME`) to its version, the promotion gate, rollback through the history of
champions.

Every registered model has one evaluation set (registered-model tags `eval_dataset`,
`eval_split`; set at first registration to the training dataset's val split). The gate scores
the candidate and the champion on it (stored `eval.<dataset>.*` version tags are reused while the
dataset's checksum is unchanged and they come from an evaluation job or from training's exact
validation, `registry.tracking.TRUSTED_SOURCES`; otherwise an evaluation job runs: every number
compared is computed the same way, on the same rows, in fp32) and refuses a worse candidate,
or one whose output is worse than its input, unless forced. Former champions are kept in the
registered-model tag `champion_history` (oldest first), so each rollback goes one further back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cluster.errors import Img2ImgError, no_registered_model
from cluster.services import require_mlflow
from cluster.settings import Settings
from cluster.storage import Storage
from registry import refs
from registry.claims import champion_claim
from registry.gate import Decision, Refused, check_metric, metric_value, promotion_objections
from registry.manifest import read_manifest
from registry.tracking import SOURCE_EVAL, TRUSTED_SOURCES, as_stored, describe_source, upsert
from translator.descriptor import GeneratorDescriptor
from translator.metrics import PSNR_DEFINITION
from translator.variants import VARIANTS

CHAMPION, PREVIOUS = "champion", "previous"
EVAL_DATASET, EVAL_SPLIT, HISTORY = "eval_dataset", "eval_split", "champion_history"


@dataclass
class VersionInfo:
    name: str
    version: str
    tags: dict
    aliases: list[str]
    run_id: str
    created: str
    description: str = ""

    def metric(self, key: str) -> float | None:
        value = self.tags.get(key)
        try:
            return float(value) if value not in (None, "") else None
        except ValueError:
            return None

    @property
    def paired(self) -> bool:
        """False for unpaired variants (their `val_*` numbers are cycle metrics)."""
        cls = VARIANTS.get(self.tags.get("variant", ""))
        return cls.paired if cls else True

    @property
    def current_metric(self) -> bool:
        """Whether its own `val_*` PSNR numbers use the current set-PSNR definition
        (`translator.metrics.PSNR_DEFINITION`); older versions averaged per-image PSNR."""
        return self.tags.get("psnr_def") == PSNR_DEFINITION

    @property
    def worse_than_input(self) -> bool:
        """Its output is worse than its input: by a current-definition evaluation's gain if it has
        one, else by its own validation's (nan: training diverged, which is no better). Numbers
        from the per-image mean of PSNR (older versions) decide nothing: see `current_metric`."""
        gains = [self.metric(k) for k in self.tags if k.startswith("eval.") and k.endswith(".gain_db")
                 and self.tags.get(k[:-len("gain_db")] + "psnr_def") == self._definition()]
        if any(g is not None for g in gains):
            return any(g is not None and not g >= 0 for g in gains)
        if not self.current_metric:
            return False
        gain = self.metric("val_gain_db")
        return self.tags.get("worse_than_input") == "true" or (gain is not None and not gain >= 0)

    @staticmethod
    def _definition() -> str:
        return PSNR_DEFINITION

    def old_eval(self, dataset: str, split: str) -> bool:
        """A stored evaluation on `dataset`/`split` computed with an older set-PSNR definition
        (per-image mean): never compared with current numbers; the gate scores such a version again."""
        prefix = f"eval.{dataset}."
        return self.tags.get(prefix + "split") == split and self.tags.get(prefix + "psnr_def") != self._definition()

    def eval_result(self, dataset: str, split: str, sha256: str | None = None) -> dict | None:
        """The stored evaluation on `dataset`/`split` -> {"psnr": .., ..., "images": n} (None if
        missing, computed on another version of the dataset, with another set-PSNR definition
        (`old_eval`), or by a source not trusted to give the evaluation job's numbers:
        `registry.tracking.TRUSTED_SOURCES`)."""
        prefix = f"eval.{dataset}."
        if self.tags.get(prefix + "split") != split or (sha256 and self.tags.get(prefix + "sha256") != sha256):
            return None
        if self.tags.get(prefix + "source", SOURCE_EVAL) not in TRUSTED_SOURCES or self.old_eval(dataset, split):
            return None
        text = ("split", "sha256", "run_id", "source", "psnr_def")
        out = {k[len(prefix):]: self.metric(k) for k in self.tags if k.startswith(prefix) and k[len(prefix):] not in text}
        return {k: v for k, v in out.items() if v is not None} or None

    def eval_source(self, dataset: str) -> str:
        """Who computed the stored result on `dataset`, for people (`registry.tracking.describe_source`)."""
        return describe_source(self.tags.get(f"eval.{dataset}.source"), self.tags.get(f"eval.{dataset}.run_id"))


def client(settings: Settings) -> MlflowClient:
    """An MLflow client of the settings' tracking server. Raises Img2ImgError when it is unreachable."""
    require_mlflow(settings)
    return MlflowClient(settings.mlflow_uri)


def _registered(c, name: str):
    try:
        return c.get_registered_model(name)
    except MlflowException:
        raise no_registered_model(name, (m.name for m in c.search_registered_models())) from None


def versions(settings: Settings, name: str | None = None) -> list[VersionInfo]:
    c = client(settings)
    names = [name] if name else [m.name for m in c.search_registered_models()]
    out = []
    for n in names:
        model = _registered(c, n)
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in c.search_model_versions(f"name='{n}'"):
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
            out.append(VersionInfo(n, str(mv.version), dict(mv.tags or {}), sorted(aliases.get(str(mv.version), [])),
                                   mv.run_id, created, mv.description or ""))
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def alias_version(settings: Settings, name: str, alias: str) -> str | None:
    """The version `alias` of model `name` points at, or None."""
    try:
        return str(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def resolve(settings: Settings, ref: str) -> VersionInfo:
    """A reference (`registry.refs`: `NAME@alias`, `NAME/VERSION`, `NAME` = champion) -> that
    registered version. Raises Img2ImgError naming what is missing (`registry.refs.resolve`)."""
    name, version = refs.resolve(settings.mlflow_uri, ref)
    return {v.version: v for v in versions(settings, name)}[version]


def model_tags(settings: Settings, name: str) -> dict:
    return dict(_registered(client(settings), name).tags or {})


def eval_set(settings: Settings, name: str) -> tuple[str, str] | None:
    """The model's evaluation set -> (dataset, split), or None if it has none."""
    tags = model_tags(settings, name)
    return (tags[EVAL_DATASET], tags.get(EVAL_SPLIT, "val")) if tags.get(EVAL_DATASET) else None


def set_eval_set(settings: Settings, name: str, dataset: str, split: str = "val") -> None:
    """Make `dataset`/`split` the yardstick of `name`'s promotion gate (checked to exist)."""
    c = client(settings)
    _registered(c, name)
    manifest = read_manifest(Storage(settings), dataset)
    if split not in ("val", "train", "all"):
        raise Img2ImgError(f"--split must be val, train or all, got {split!r}")
    if split != "all" and not manifest.counts.get(split):
        raise Img2ImgError(f"dataset {dataset!r} has no rows in split {split!r}; pick another --split")
    upsert(c.set_registered_model_tag, name, EVAL_DATASET, dataset)
    upsert(c.set_registered_model_tag, name, EVAL_SPLIT, split)


def _history(tags: dict) -> list[str]:
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY, "[]"))]
    except ValueError:
        return []


Evaluate = Callable[[str, str, str], dict]  # (NAME/VERSION, dataset, split) -> eval summary


def scores(settings: Settings, name: str, candidates: list[VersionInfo], evaluate: Evaluate | None):
    """Each version's metrics on the model's evaluation set: stored trusted ones
    (`VersionInfo.eval_result`) where the dataset's checksum still matches, else by running
    `evaluate` -> (dataset, split, {version: metrics}, {version: who computed them}). Numbers of
    an older set-PSNR definition are never reused (`VersionInfo.old_eval`): scored again, or,
    without `evaluate`, refused."""
    where = eval_set(settings, name)
    if where is None:  # registered before evaluation sets existed: the first version's dataset
        first = min(versions(settings, name), key=lambda v: int(v.version), default=None)
        if first is None or not first.tags.get("dataset"):
            raise Img2ImgError(f"model {name!r} has no evaluation set; set one with "
                               f"`img2img models set-eval {name} --dataset DATASET`")
        set_eval_set(settings, name, first.tags["dataset"], "val")
        where = (first.tags["dataset"], "val")
    dataset, split = where
    sha = read_manifest(Storage(settings), dataset).sha256
    out, sources = {}, {}
    for v in candidates:
        result = v.eval_result(dataset, split, sha)
        sources[v.version] = v.eval_source(dataset)
        if result is None:
            if evaluate is None:
                why = (" computed with the current PSNR definition (its stored one averaged per-image PSNR; "
                       f"score it again: img2img eval {name}/{v.version} --dataset {dataset} --split {split})"
                       if v.old_eval(dataset, split) else "")
                raise Img2ImgError(f"{name} v{v.version} has no evaluation on {dataset}/{split}{why}")
            summary = evaluate(f"{name}/{v.version}", dataset, split)
            result = as_stored(summary["metrics"])  # as its tags now say, like the stored ones
            sources[v.version] = describe_source(SOURCE_EVAL, summary.get("run_id"), now=True) + (
                "; its stored numbers averaged per-image PSNR, re-scored" if v.old_eval(dataset, split) else "")
        out[v.version] = result
    return dataset, split, out, sources


def promote(settings: Settings, name: str, version: str | None = None, best: bool = False,
            metric: str = "psnr", force: bool = False, evaluate: Evaluate | None = None,
            among: list[str] | None = None) -> Decision:
    """Point `champion` at `version` (or, with `best`, at the best version on the evaluation set;
    `among`: only these versions are scored and ranked, e.g. those trained on the current data).

    Candidate and champion are scored on the model's evaluation set (`metric`: psnr, ssim or
    gain_db; higher is better; unpaired models by their cycle metric). Refuses, unless `force`,
    a candidate scoring below the champion or one whose output is worse than its input
    (`promotion_objections`).
    Raises Img2ImgError with the reason. The replaced champion is pushed onto the history.
    """
    check_metric(metric)
    all_versions = versions(settings, name)
    if not all_versions:
        raise Img2ImgError(f"model {name!r} has no versions yet; train one with: img2img train --model-name {name} ...")
    by_version = {v.version: v for v in all_versions}
    current = alias_version(settings, name, CHAMPION)
    if best:
        pool = all_versions if among is None else [v for v in all_versions if v.version in {str(a) for a in among}]
        if not pool:
            raise Img2ImgError(f"model {name!r} has none of the versions to rank ({', '.join(map(str, among or []))})")
    elif version is not None:
        if str(version) not in by_version:
            raise Img2ImgError(f"model {name!r} has no version {version} (it has {', '.join(by_version)})")
        pool = [by_version[str(version)]] + ([by_version[current]] if current and current != str(version) else [])
    else:
        raise Img2ImgError(f"say which version to promote: img2img models promote {name} VERSION, or --best")
    dataset, split, score, source = scores(settings, name, pool, evaluate)
    # nan/inf (a diverged run) cannot be ranked: max() over nan depends on the order it meets them
    ranked = [v for v in pool if metric_value(score[v.version], metric) is not None
              and (not best or math.isfinite(metric_value(score[v.version], metric)))]
    if not ranked:
        raise Img2ImgError(f"no version of {name!r} has a finite {metric} on {dataset}/{split}")
    candidate = max(ranked, key=lambda v: metric_value(score[v.version], metric)) if best else by_version[str(version)]
    shown = [v for v in score if best or v in (candidate.version, current)]
    decision = Decision(name, candidate.version, current, dataset, split, metric,
                        {v: score[v] for v in shown}, {v: source[v] for v in shown})
    scales = {v.version: GeneratorDescriptor.from_tags(v.tags).scale for v in pool}
    reasons = promotion_objections(candidate.version, current, score, metric, f"{dataset}/{split}", scales)
    if reasons and not force:
        raise Refused(f"{'; '.join(reasons)}; pass --force to promote it anyway", decision)
    decision.warnings += [f"promoted although {why}" for why in reasons]
    if current == candidate.version:
        decision.changed = False
        return decision
    make_champion(settings, name, candidate.version, current)
    return decision


def make_champion(settings: Settings, name: str, version: str, current: str | None, *,
                  check_current: bool = True) -> None:
    """Point `champion` at `version`, pushing the `current` champion (None: there is none) onto
    the history that `rollback` walks back (the gate is the caller's: `promote` scores offline,
    a rollout judges live requests, against the version it served: `check_current=False`). Raises
    Img2ImgError, changing nothing, when another client is changing this model's champion, or (with
    `check_current`) has changed it since `current` was read."""
    c = client(settings)
    with champion_claim(settings, name, f"promoting v{version}"):
        now = alias_version(settings, name, CHAMPION)
        if check_current and now != current:
            raise Img2ImgError(f"the champion of {name!r} is v{now} now, not v{current} as when v{version} was "
                               "judged against it (another client changed it); nothing changed: run this again")
        if current is not None and current != version:
            history = [v for v in _history(model_tags(settings, name)) if v not in (current, version)]
            history.append(current)
            upsert(c.set_registered_model_tag, name, HISTORY, json.dumps(history))
            upsert(c.set_registered_model_alias, name, PREVIOUS, current)
        upsert(c.set_registered_model_alias, name, CHAMPION, version)


def rollback(settings: Settings, name: str) -> tuple[str, str | None, list[str]]:
    """Move `champion` to the most recent former champion (which leaves the history, so the next
    rollback goes one further back) -> (new champion, demoted version, history left). Raises
    Img2ImgError when there is none, or when another client is changing the champion."""
    with champion_claim(settings, name, "rolling back"):
        return _rollback(settings, name)


def _rollback(settings: Settings, name: str) -> tuple[str, str | None, list[str]]:
    c = client(settings)
    existing = {v.version for v in versions(settings, name)}
    current = alias_version(settings, name, CHAMPION)
    history = [v for v in _history(model_tags(settings, name)) if v in existing and v != current]
    if current is None:
        raise Img2ImgError(f"model {name!r} has no champion yet, so nothing to roll back; promote one with: "
                           f"img2img models promote {name} --best")
    if not history:
        raise Img2ImgError(f"model {name!r} has no former champion to roll back to"
                           + (f" (v{current} is the first)" if current else ""))
    target = history.pop()
    upsert(c.set_registered_model_tag, name, HISTORY, json.dumps(history))
    upsert(c.set_registered_model_alias, name, CHAMPION, target)
    if history:
        upsert(c.set_registered_model_alias, name, PREVIOUS, history[-1])
    else:
        c.delete_registered_model_alias(name, PREVIOUS)
    return target, current, history
