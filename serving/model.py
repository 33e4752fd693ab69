"""Loading a registered generator from MLflow and running it on one image (tiled)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from translator import tiling

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    generator: torch.nn.Module
    name: str
    version: str
    variant: str
    multiple: int
    metrics: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    device: str = "cpu"

    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "variant": self.variant, "multiple": self.multiple,
                "metrics": self.metrics, "device": self.device,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    @torch.inference_mode()
    def enhance(self, image: torch.Tensor, tile: int = 512, overlap: int = 32) -> torch.Tensor:
        forward = lambda x: self.generator(x.to(self.device)).float().cpu()  # noqa: E731
        return tiling.enhance(forward, image, tile=tile, overlap=overlap, multiple=self.multiple)


def resolve(tracking_uri: str, model: str) -> tuple[str, str]:
    """`NAME@alias`, `NAME/VERSION` or `NAME` (= NAME@champion) -> (name, concrete version).

    Raises Img2ImgError saying which part is missing: the model, the version, or the alias
    (with the command that sets `champion`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cluster.errors import Img2ImgError, no_registered_model

    client = MlflowClient(tracking_uri)
    model = model.removeprefix("models:/")
    if "/" in model:
        name, version = model.split("/", 1)
    else:
        name, _, alias = model.partition("@")
        version, alias = None, alias or "champion"
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise no_registered_model(name) from None
    if version is not None:
        have = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
        if version not in have:
            raise Img2ImgError(f"model {name!r} has no version {version!r} (it has: {', '.join(have) or 'none'})")
        return name, version
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        if alias == "champion":
            raise Img2ImgError(f"model {name!r} has no champion yet; promote a version with: "
                               f"img2img models promote {name} --best")
        raise Img2ImgError(f"model {name!r} has no alias {alias!r} (its aliases: {', '.join(sorted(aliases)) or 'none'})")
    return name, str(aliases[alias])


def _load_generator(uri: str, device: str):
    """mlflow.pytorch.load_model into a temp dir that is removed once the network is in memory
    (left to itself, mlflow leaves a full copy of the model in the temp dir on every load).
    The model's pickled code paths are already importable here (`translator`), so dropping
    the copy and its sys.path entry is safe."""
    import sys
    import tempfile

    import mlflow.pytorch

    import translator  # noqa: F401  (imported from our code, never from the model's copy)

    with tempfile.TemporaryDirectory(prefix="img2img-model-") as tmp:
        path_before = list(sys.path)
        try:
            return mlflow.pytorch.load_model(uri, dst_path=tmp, map_location=device).eval()
        finally:
            sys.path[:] = [p for p in sys.path if not p.startswith(tmp)] or path_before


def load(tracking_uri: str, name: str, version: str, device: str | None = None) -> LoadedModel:
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mv = MlflowClient(tracking_uri).get_model_version(name, version)
    generator = _load_generator(f"models:/{name}/{version}", device)
    tags = dict(mv.tags or {})
    metrics = {k: float(v) for k, v in tags.items() if k.startswith("val_")}
    return LoadedModel(generator, name, str(version), tags.get("variant", "unknown"),
                       int(tags.get("multiple", getattr(generator, "multiple", 1))), metrics, device=device)
