"""`img2img train --init-from NAME@alias|NAME/VERSION`: start a run from a registered model.

Resolved on the client, before anything is submitted: the version, its training checkpoint in
the object store (all networks, so GANs keep their discriminators), and its variant config,
which fills every setting the user left unset. The new run must build exactly the same
networks (same parameter names and shapes) or it is refused here with the first difference.
"""

from __future__ import annotations

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from jobs.spec import TrainSpec


def architecture(variant: str, config: dict) -> dict[str, tuple]:
    """`net.param` -> shape of every parameter/buffer of a variant built from `config` (on the
    meta device: shapes only, no memory). Raises Img2ImgError for an invalid config."""
    from translator.config import ConfigError
    from translator.variants import get_variant

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


def resolve_init(spec: TrainSpec, settings: Settings) -> None:
    """Fill `spec.init_path`, `spec.parent`, the variant and the config from `spec.init_from`.
    Raises Img2ImgError (before submission) if the model, its checkpoint or a matching
    architecture is missing."""
    from cluster.storage import Storage
    from jobs.registry import client, resolve

    if spec.resume:
        raise Img2ImgError("--init-from and --resume exclude each other (resume continues a run; "
                           "init-from starts a new one from a registered model)")
    parent = resolve(settings, spec.init_from)
    ref = f"{parent.name}/{parent.version}"
    parent_variant = parent.tags.get("variant")
    if not parent_variant:
        raise Img2ImgError(f"{ref} has no variant tag; it was not registered by `img2img train`")
    if spec.variant and spec.variant != parent_variant:
        raise Img2ImgError(f"--init-from {spec.init_from} is a {parent_variant} model; it cannot start a "
                           f"{spec.variant} run (drop --variant, or pass --variant {parent_variant})")
    spec.variant = parent_variant
    run = client(settings).get_run(parent.run_id)
    parent_cfg = {k[4:]: v for k, v in run.data.params.items() if k.startswith("cfg.")}
    spec.config = {**parent_cfg, **spec.config}
    wanted = spec.variant_config().__dict__
    problem = _difference(architecture(parent_variant, parent_cfg), architecture(spec.variant, wanted))
    if problem:
        raise Img2ImgError(f"--init-from {spec.init_from}: a different architecture ({problem}); "
                           "drop the --set options that change the network")
    path = run.data.tags.get("checkpoint", "")
    bucket, _, key = path.partition("/")
    if not key or bucket != settings.bucket or not Storage(settings).exists(f"{key}/state.pt"):
        raise Img2ImgError(f"the training checkpoint of {ref} is not in the object store any more "
                           f"({path or 'none recorded'}); it cannot be fine-tuned")
    spec.init_path, spec.parent = path, ref
