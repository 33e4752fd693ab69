"""Loading a registered generator from MLflow and running it on one image (tiled), on the
runtime chosen for this machine (translator/runtime.py). Used by the endpoint (serving/) and the
batch job (jobs/batch/), so both run a version the same way."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field

import mlflow
import mlflow.pytorch
import torch
from mlflow.tracking import MlflowClient

import translator  # noqa: F401  (the models' pickled code is imported from ours, never from their copy)
from cluster.errors import Img2ImgError
from cluster.services import bound_mlflow_calls, require
from translator import tiling
from translator.catalog import variant_names
from translator.descriptor import GeneratorDescriptor
from translator.metrics import PSNR_DEFINITION
from translator.runtime import CHOICE_SIZES, Runtime, build, cpu_candidates, fastest_per_size
from translator.tasks import task_for_spec

log = logging.getLogger(__name__)
UNPAIRED = set(variant_names(paired=False))
# Up to one default tile (512 x 512), torch bf16 beat ONNX Runtime on 2 cores with native bf16
# (256 px: 54 vs 63 ms; 512 px: 248 vs 318 ms); at 1024 x 1024 ONNX Runtime won (2.68 vs 2.98 s).
SMALL_IMAGE_PIXELS = 512 * 512


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
        if self.descriptor is None:
            self.descriptor = GeneratorDescriptor.from_tags({"multiple": str(self.multiple)}, self.generator)
        if self.runtime is None:  # plain fp32 PyTorch, as the generator came
            self.runtime = build(self.generator, self.multiple, "torch", torch.get_num_threads(), self.device,
                                 "contiguous", "fp32")

    seconds_per_megapixel: float | None = None
    degradation: str | None = None  # the training set's degradation spec (registry tag), None if not synthesised
    reverse_runtime: Runtime | None = None  # B->A of two-way models, built on first use
    # runtime "auto" on a CPU: images of at most `small_pixels` run here when another runtime was
    # measured faster on them than on one tile (`fastest_per_size`), larger ones on `runtime`.
    small_runtime: Runtime | None = None
    small_pixels: int = 0
    runtime_choice: dict | None = None  # auto's timings per size and runtime, ms
    psnr_definition: str = PSNR_DEFINITION  # how `metrics`' PSNR and gain were computed (translator.metrics)
    # what the generator is (scale, directions...): the version's `descriptor` tag; None: from `multiple`
    descriptor: GeneratorDescriptor | None = None

    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "variant": self.variant,
                "task": task_for_spec(self.degradation), "degradation": self.degradation, "multiple": self.multiple,
                "scale": self.descriptor.scale,
                "metrics": self.metrics, "psnr_definition": self.psnr_definition, "device": self.runtime.device, **self.runtime.info(),
                "small_images": ({"max_pixels": self.small_pixels, **self.small_runtime.info()}
                                 if self.small_runtime else None),
                "runtime_choice": self.runtime_choice,
                "directions": self.directions, "seconds_per_megapixel": self.seconds_per_megapixel,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    @property
    def directions(self) -> list[str]:
        """['AtoB'] for paired models; ['AtoB', 'BtoA'] for unpaired ones logged with both generators."""
        return list(self.descriptor.directions)

    def net(self, direction: str = "AtoB", pixels: int | None = None) -> Runtime:
        """The runtime for a direction (A->B on the chosen runtime; B->A on PyTorch with the same
        memory format and precision) and, when given, an image of `pixels` pixels (H x W: small
        ones may run on `small_runtime`). Raises Img2ImgError when the model does not offer it."""
        if direction not in ("AtoB", "BtoA"):
            raise Img2ImgError(f"direction must be AtoB or BtoA, not {direction!r}")
        if direction not in self.directions:
            why = ("it was registered with its A->B generator only" if self.variant in UNPAIRED
                   else "it is a paired model")
            raise Img2ImgError(f"{self.name} v{self.version} ({self.variant}) cannot translate {direction}: {why}")
        if direction == "AtoB":
            if self.small_runtime is not None and pixels is not None and pixels <= self.small_pixels:
                return self.small_runtime
            return self.runtime
        if self.reverse_runtime is None:
            rt = self.runtime
            self.reverse_runtime = build(self.generator.BtoA, self.multiple, "torch", rt.threads, self.device,
                                         rt.memory_format, rt.precision)
        return self.reverse_runtime

    def forward(self, batch: torch.Tensor, precise: bool = False, direction: str = "AtoB") -> torch.Tensor:
        """N x 3 x H x W float32 in [-1, 1] -> the same, float32 on the CPU. `precise`: always
        fp32 (16-bit images), whatever precision the runtime chose."""
        return self.net(direction).run(batch, precise)

    @torch.inference_mode()
    def enhance(self, image: torch.Tensor, tile: int = tiling.TILE, overlap: int = tiling.OVERLAP, precise: bool = False,
                direction: str = "AtoB") -> torch.Tensor:
        """1 x 3 x H x W in [-1, 1], any H x W (tiled) -> 1 x 3 x H*scale x W*scale in the same range
        (`scale`: the descriptor's, 1 for same-size translators)."""
        net = self.net(direction, image.shape[-2] * image.shape[-1])
        return tiling.enhance(lambda x: net.run(x, precise), image, tile=tile, overlap=overlap,
                              multiple=self.multiple, scale=self.descriptor.scale)

    def measure_speed(self, size: int = 256, runs: int = 2) -> float:
        """Seconds per megapixel of one image on this device (best of `runs`, after a warm-up run),
        on the runtime large images use (they are what request time limits are sized for)."""
        image = torch.zeros(1, 3, size, size)
        run = lambda: tiling.enhance(lambda x: self.runtime.run(x), image, tile=size, multiple=self.multiple,  # noqa: E731
                                    scale=self.descriptor.scale)
        run()
        if self.small_runtime is not None:  # warm it up too: the first request should not pay for it
            self.enhance(image, tile=size)
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        self.seconds_per_megapixel = best / (size * size / 1e6)
        return self.seconds_per_megapixel


def served_metrics(tags: dict) -> dict[str, float]:
    """A version's registry tags -> the validation metrics `GET /model` shows ({"val_psnr": dB, ...}).
    PSNR and gain numbers of a version validated with an older set-PSNR definition (the mean of
    per-image PSNRs, tag `psnr_def` absent) are left out: a few flat crops could flip their sign."""
    metrics = {k: float(v) for k, v in tags.items() if k.startswith("val_")}
    if tags.get("psnr_def") != PSNR_DEFINITION:
        metrics = {k: v for k, v in metrics.items() if "psnr" not in k and "gain" not in k}
    return metrics


def version_run_id(tracking_uri: str, name: str, version: str) -> str:
    """The MLflow run that produced `name` v`version`: part of a deployment's identity, since a
    model deleted and registered again reuses version numbers for different weights.
    -> the run id (32 hex characters; "" for a version registered without a run).
    Raises mlflow.exceptions.MlflowException when `name` has no version `version` (callers
    resolve the version first with `registry.refs.resolve`, which names what is missing)."""
    return MlflowClient(tracking_uri).get_model_version(name, str(version)).run_id or ""


def _load_generator(uri: str, device: str):
    """mlflow.pytorch.load_model into a temp dir that is removed once the network is in memory
    (left to itself, mlflow leaves a full copy of the model in the temp dir on every load).
    The model's pickled code paths are already importable here (`translator`), so dropping
    the copy and its sys.path entry is safe."""
    with tempfile.TemporaryDirectory(prefix="img2img-model-") as tmp:
        path_before = list(sys.path)
        try:
            return mlflow.pytorch.load_model(uri, dst_path=tmp, map_location=device).eval()
        finally:
            sys.path[:] = [p for p in sys.path if not p.startswith(tmp)] or path_before


def load(tracking_uri: str, name: str, version: str, device: str | None = None, runtime: str = "auto",
         threads: int | None = None, memory_format: str = "channels_last", precision: str = "auto") -> LoadedModel:
    """Version `version` of registered model `name`, ready on `runtime` (auto | torch | onnx) with
    `threads` intra-op threads (None: all CPUs). auto: torch on a GPU; on a CPU, ONNX Runtime,
    torch channels_last fp32 and torch bf16 (native bf16 within one 8-bit level of fp32 only;
    `translator.runtime.cpu_candidates`) timed on this model at 256 px and on one tile: images up to
    SMALL_IMAGE_PIXELS run on the fastest at 256 px, larger ones on the fastest per tile
    (`runtime_choice` in `info()` holds the timings).
    onnx uses the export logged by `img2img models export` when there is one, else exports (and
    parity-checks) here."""
    bound_mlflow_calls()
    require("MLflow", tracking_uri, "/health")
    mlflow.set_tracking_uri(tracking_uri)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mv = MlflowClient(tracking_uri).get_model_version(name, version)
    generator = _load_generator(f"models:/{name}/{version}", device)
    tags = dict(mv.tags or {})
    metrics = served_metrics(tags)
    descriptor = GeneratorDescriptor.from_tags(tags, generator)
    multiple = descriptor.size_multiple
    onnx_file = None
    if runtime in ("onnx", "auto") and device == "cpu" and tags.get("export_onnx"):
        onnx_file = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=tags["export_onnx"])
    rt = build(generator, multiple, runtime, threads, device, memory_format, precision, onnx_file, descriptor)
    small, choice = None, None
    if runtime == "auto" and rt.name == "onnx":
        # Which is faster depends on the model, the CPU (native bf16 or not), the threads and the
        # allocator: time both on this model here instead of assuming (see fastest_per_size).
        candidates, notes = cpu_candidates(generator, rt.threads, rt)
        fastest, choice = fastest_per_size(candidates, (CHOICE_SIZES[0], tiling.TILE))
        choice.update(notes)
        rt, small = fastest[tiling.TILE], fastest[CHOICE_SIZES[0]]
        small = None if small is rt else small
    return LoadedModel(generator, name, str(version), tags.get("variant", "unknown"), multiple, metrics,
                       psnr_definition=tags.get("psnr_def", "per-image-mean"),
                       device=device, runtime=rt, degradation=tags.get("degradation"), small_runtime=small,
                       small_pixels=SMALL_IMAGE_PIXELS if small else 0, runtime_choice=choice, descriptor=descriptor)


def load_and_measure(*args, **kwargs) -> LoadedModel:
    """`load(*args, **kwargs)`, then its speed measured (which warms it up too; the
    speed sizes request time limits). Run on the compute thread: the runtime choice and the
    speed are then measured on the thread that will serve."""
    model = load(*args, **kwargs)
    model.measure_speed()
    return model
