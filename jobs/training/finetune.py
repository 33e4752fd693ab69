"""`img2img train --init-from NAME@alias|NAME/VERSION`: start a run from a registered model.

Resolved on the client, before anything is submitted: the version, its training checkpoint in
the object store (all networks, so GANs keep their discriminators), and its variant config,
which fills every setting the user left unset, except those of its training data when the
new run trains on another dataset (`network_config`). The new run must build exactly the same
networks (same parameter names and shapes) or it is refused here with the first difference.
"""

from __future__ import annotations

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.training.spec import TrainSpec
from registry.models import client, resolve
from registry.tracking import logged_config
from translator.config import ConfigError, TrainConfig
from translator.variants import get_variant


def architecture(variant: str, config: dict) -> dict[str, tuple]:
    """`net.param` -> shape of every parameter/buffer of a variant built from `config` (on the
    meta device: shapes only, no memory). Raises Img2ImgError for an invalid config."""
    try:
        v = get_variant(variant).on_meta(config)
    except (ConfigError, ValueError) as e:
        raise Img2ImgError(str(e)) from None
    return {f"{net}.{k}": tuple(t.shape) for net, m in v.networks().items() for k, t in m.state_dict().items()}


def _difference(parent: dict[str, tuple], child: dict[str, tuple], source: str = "the parent") -> str | None:
    for key in sorted(set(parent) | set(child)):
        if parent.get(key) != child.get(key):
            there = "missing" if key not in parent else f"shape {list(parent[key])}"
            here = "missing" if key not in child else f"shape {list(child[key])}"
            return f"{key} is {there} in {source}, {here} in this run"
    return None


def adopt(spec: TrainSpec, had_variant: str, had_config: dict, flag: str, source: str) -> None:
    """What `--init-from` and `--resume` share: the networks come from an earlier run, so its
    variant and config (`had_variant`, `had_config`) fill what the request leaves unset
    (`spec.variant` "" and absent `--set` keys); settings that change no network (lr, batch size,
    crops, schedule) may differ. `flag` names the option in errors (e.g. "--resume run1"),
    `source` the earlier networks ("the parent", "the checkpoint"). Raises Img2ImgError for
    another variant, an invalid `--set`, or a different architecture (the first difference)."""
    if spec.variant and spec.variant != had_variant:
        raise Img2ImgError(f"{flag} trained {had_variant}; it cannot be used as {spec.variant} "
                           f"(drop --variant, or pass --variant {had_variant})")
    spec.variant = had_variant
    # What --lr / --batch-size / --image-size set is the request's, not an inherited --set value.
    explicit = {key for key in ("lr", "batch_size", "image_size") if getattr(spec, key) is not None}
    spec.config = {**{k: v for k, v in had_config.items() if k not in explicit}, **spec.config}
    try:
        wanted = spec.variant_config().__dict__
    except ValueError as e:
        raise Img2ImgError(str(e)) from None
    problem = _difference(architecture(had_variant, had_config), architecture(spec.variant, wanted), source)
    if problem:
        raise Img2ImgError(f"{flag}: a different architecture ({problem}); "
                           "drop the --set options that change the network")


def network_config(config: dict) -> dict:
    """An earlier run's config without the settings of its training data (`TrainConfig.DATA_SETTINGS`:
    where its inputs came from, jitter, dead leaves, multi-scale): what a new run started from its
    networks on another dataset (`--init-from`) takes from it. A parent trained on inputs drawn
    afresh with a Gaussian blur would otherwise redraw them on a dataset of real pairs; on the
    parent's own dataset (a pipeline's `finetune: true`) they are kept."""
    return {k: v for k, v in config.items() if k not in TrainConfig.DATA_SETTINGS}


def inherited_config(params: dict[str, str], dataset: str) -> dict[str, str]:
    """What a run on `dataset` started from a parent takes from the parent run's MLflow `params`:
    its config (the `cfg.KEY` params), all of it on the parent's own dataset (its `dataset`
    param), else `network_config` of it."""
    config = logged_config(params)
    return config if params.get("dataset") == dataset else network_config(config)


def resolve_init(spec: TrainSpec, settings: Settings) -> None:
    """Fill `spec.init_path`, `spec.parent`, the variant and the config from `spec.init_from`.
    Raises Img2ImgError (before submission) if the model, its checkpoint or a matching
    architecture is missing."""
    if spec.resume:
        raise Img2ImgError("--init-from and --resume exclude each other (resume continues a run; "
                           "init-from starts a new one from a registered model)")
    parent = resolve(settings, spec.init_from)
    ref = f"{parent.name}/{parent.version}"
    parent_variant = parent.tags.get("variant")
    if not parent_variant:
        raise Img2ImgError(f"{ref} has no variant tag; it was not registered by `img2img train`")
    run = client(settings).get_run(parent.run_id)
    adopt(spec, parent_variant, inherited_config(run.data.params, spec.dataset), f"--init-from {spec.init_from}",
          "the parent")
    path = run.data.tags.get("checkpoint", "")
    bucket, _, key = path.partition("/")
    if not key or bucket != settings.bucket or not Storage(settings).exists(f"{key}/state.pt"):
        raise Img2ImgError(f"the training checkpoint of {ref} is not in the object store any more "
                           f"({path or 'none recorded'}); it cannot be fine-tuned")
    spec.init_path, spec.parent = path, ref
