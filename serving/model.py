"""Loading a registered generator from MLflow and running it on one image (tiled), on the
runtime chosen for this machine (serving/runtime.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from serving.runtime import Runtime, build
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
    runtime: Runtime | None = None

    def __post_init__(self):
        if self.runtime is None:  # plain fp32 PyTorch, as the generator came
            self.runtime = build(self.generator, self.multiple, "torch", torch.get_num_threads(), self.device,
                                 "contiguous", "fp32")

    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "variant": self.variant, "multiple": self.multiple,
                "metrics": self.metrics, "device": self.runtime.device, **self.runtime.info(),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    def forward(self, batch: torch.Tensor, precise: bool = False) -> torch.Tensor:
        """N x 3 x H x W float32 in [-1, 1] -> the same, float32 on the CPU. `precise`: always
        fp32 (16-bit images), whatever precision the runtime chose."""
        return self.runtime.run(batch, precise)

    @torch.inference_mode()
    def enhance(self, image: torch.Tensor, tile: int = 512, overlap: int = 32, precise: bool = False) -> torch.Tensor:
        return tiling.enhance(lambda x: self.forward(x, precise), image, tile=tile, overlap=overlap,
                              multiple=self.multiple)


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


def load(tracking_uri: str, name: str, version: str, device: str | None = None, runtime: str = "auto",
         threads: int | None = None, memory_format: str = "channels_last", precision: str = "auto") -> LoadedModel:
    """Version `version` of registered model `name`, ready on `runtime` (torch | onnx) with
    `threads` intra-op threads (None: all CPUs); auto = onnx on CPU, torch on GPU. onnx uses the export logged by
    `img2img models export` when there is one, else exports (and parity-checks) here."""
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mv = MlflowClient(tracking_uri).get_model_version(name, version)
    generator = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location=device).eval()
    tags = dict(mv.tags or {})
    metrics = {k: float(v) for k, v in tags.items() if k.startswith("val_")}
    multiple = int(tags.get("multiple", getattr(generator, "multiple", 1)))
    onnx_file = None
    if runtime in ("onnx", "auto") and device == "cpu" and tags.get("export_onnx"):
        onnx_file = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=tags["export_onnx"])
    rt = build(generator, multiple, runtime, threads, device, memory_format, precision, onnx_file)
    return LoadedModel(generator, name, str(version), tags.get("variant", "unknown"), multiple, metrics,
                       device=device, runtime=rt)
