"""The MLflow model registry: list versions, promote a version to `champion`, roll back.

Promotion keeps the previous champion under the alias `previous` and refuses a candidate that
is worse than the current champion on the chosen metric unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cluster.errors import Img2ImgError, no_registered_model
from cluster.settings import Settings

CHAMPION, PREVIOUS = "champion", "previous"


@dataclass
class VersionInfo:
    name: str
    version: str
    tags: dict
    aliases: list[str]
    run_id: str
    created: str

    def metric(self, key: str) -> float | None:
        value = self.tags.get(key)
        return float(value) if value not in (None, "") else None


def client(settings: Settings):
    from mlflow.tracking import MlflowClient

    from jobs.submit import require_mlflow

    require_mlflow(settings)
    return MlflowClient(settings.mlflow_uri)


def versions(settings: Settings, name: str | None = None) -> list[VersionInfo]:
    from mlflow.exceptions import MlflowException

    c = client(settings)
    names = [name] if name else [m.name for m in c.search_registered_models()]
    out = []
    for n in names:
        try:
            model = c.get_registered_model(n)
        except MlflowException:
            raise no_registered_model(n) from None
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in c.search_model_versions(f"name='{n}'"):
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
            out.append(VersionInfo(n, str(mv.version), dict(mv.tags or {}), sorted(aliases.get(str(mv.version), [])),
                                   mv.run_id, created))
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def alias_version(settings: Settings, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(settings: Settings, name: str, version: str | None = None, best: bool = False,
            metric: str = "val_psnr", force: bool = False) -> tuple[str, str | None]:
    """Point `champion` at a version (or the best by `metric`) -> (new, previous champion)."""
    all_versions = versions(settings, name)
    if not all_versions:
        raise Img2ImgError(f"model {name!r} has no versions yet; train one with: img2img train --model-name {name} ...")
    by_version = {v.version: v for v in all_versions}
    if best:
        scored = [v for v in all_versions if v.metric(metric) is not None]
        if not scored:
            raise Img2ImgError(f"no version of {name!r} has the metric {metric!r}")
        candidate = max(scored, key=lambda v: v.metric(metric))
    elif version is not None:
        if str(version) not in by_version:
            raise Img2ImgError(f"model {name!r} has no version {version} (it has {', '.join(by_version)})")
        candidate = by_version[str(version)]
    else:
        raise Img2ImgError(f"say which version to promote: img2img models promote {name} VERSION, or --best")
    current = alias_version(settings, name, CHAMPION)
    if current == candidate.version:
        return candidate.version, alias_version(settings, name, PREVIOUS)
    if current is not None and not force:
        new, old = candidate.metric(metric), by_version[current].metric(metric)
        if new is not None and old is not None and new < old:
            raise Img2ImgError(f"version {candidate.version} has {metric} {new:.3f}, worse than champion "
                               f"v{current} ({old:.3f}); pass --force to promote it anyway")
    c = client(settings)
    if current is not None:
        c.set_registered_model_alias(name, PREVIOUS, current)
    c.set_registered_model_alias(name, CHAMPION, candidate.version)
    return candidate.version, current


def rollback(settings: Settings, name: str) -> tuple[str, str]:
    """Swap `champion` and `previous` -> (new champion, demoted version)."""
    versions(settings, name)  # an unknown name is reported as such, not as "no previous champion"
    current, previous = alias_version(settings, name, CHAMPION), alias_version(settings, name, PREVIOUS)
    if current is None:
        raise Img2ImgError(f"model {name!r} has no champion yet, so nothing to roll back; promote one with: "
                           f"img2img models promote {name} --best")
    if previous is None:
        raise Img2ImgError(f"model {name!r} has no previous champion to roll back to (only one version "
                           "was ever promoted)")
    c = client(settings)
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_registered_model_alias(name, PREVIOUS, current)
    return previous, current
