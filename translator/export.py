"""Portable generators: export to ONNX or TorchScript, and check the export against PyTorch.

The exported graph is the generator wrapped in `PadToMultiple`: it takes float32 NCHW in
[-1, 1] of ANY batch, height and width (all three dynamic), pads the bottom/right edges by
replication up to the network's multiple (U-Nets need 2**depth, NAFNet 2**stages), runs the
generator and crops back, so callers outside Python need not know the network's stride.

ONNX uses the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): the
dynamo exporter cannot yet express the size-dependent padding with dynamic height and width.
TorchScript uses `torch.jit.trace`; sizes are traced as tensors, so the padding stays dynamic.

Every export is run against the eager PyTorch module on `PARITY_SIZES` (including odd ones)
and refused above `TOLERANCE` max abs difference. An untrained NAFNet is the identity, so the
check only means something with trained (non-trivial) weights.

This module is pure PyTorch plus the `onnx`/`onnxruntime` libraries (imported lazily).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from translator.descriptor import GeneratorDescriptor

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-3  # max abs difference on the [-1, 1] scale (one 8-bit level is 2/255 ~ 0.0078)
# (batch, height, width): a multiple-friendly size, then odd sizes that exercise the padding.
PARITY_SIZES = ((1, 64, 64), (2, 45, 77), (1, 97, 130))
OPSET = 17
INPUT, OUTPUT = "input", "output"


class ExportError(ValueError):
    """The export failed or its output differs from PyTorch by more than the tolerance."""


class PadToMultiple(nn.Module):
    """`generator` made size-agnostic: N x C x H x W (any H, W >= 1) -> N x C' x scale*H x scale*W
    (`scale`: the generator's output size / input size, `GeneratorDescriptor.scale`).

    Pads bottom/right by edge replication to a multiple of `multiple`, runs the generator,
    crops back. Replication (not reflection) because it is defined for every size, including
    inputs smaller than the padding; `translator.tiling` pads tiles itself, so on the serving
    path this wrapper pads nothing.
    """

    def __init__(self, generator: nn.Module, multiple: int, scale: int = 1):
        super().__init__()
        self.generator = generator
        self.multiple = int(multiple)
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        y = self.generator(F.pad(x, (0, pw, 0, ph), mode="replicate"))
        if self.scale != 1:  # scale 1 keeps the traced graph exactly as it was
            h, w = h * self.scale, w * self.scale
        return y[..., :h, :w]


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # worst over all sizes, [-1, 1] scale
    per_size: dict[str, float] = field(default_factory=dict)  # "NxHxW" -> max abs diff
    tolerance: float = TOLERANCE


def _sample(batch: int, h: int, w: int, channels: int, seed: int) -> torch.Tensor:
    """Smooth images with detail (not noise only): what a restoration net actually sees."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(2, h // 8), max(2, w // 8), generator=g) * 2 - 1
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 0.1 * torch.randn(batch, channels, h, w, generator=g)).clamp(-1, 1)


def export_onnx(module: nn.Module, path: Path, example: torch.Tensor, opset: int = OPSET,
                metadata: dict[str, str] | None = None) -> Path:
    """Write `module` (NCHW float32 -> NCHW float32) as ONNX with dynamic batch/height/width.

    Input `input`, output `output`. `metadata` lands in the model's metadata_props (strings).
    Raises ExportError when the exporter fails.
    """
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # TracerWarnings about frozen branches and the deprecation note
            torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: axes})
    except Exception as e:  # the exporter raises many types; one clear line for the user
        raise ExportError(f"ONNX export failed: {str(e).splitlines()[0][:300]}") from None
    model = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def export_torchscript(module: nn.Module, path: Path, example: torch.Tensor,
                       metadata: dict[str, str] | None = None) -> Path:
    """Write `module` as a traced TorchScript archive (`torch.jit.load` it; any N, H, W).

    `metadata` is stored as extra files `<key>.txt`. Raises ExportError when tracing fails.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
    except Exception as e:
        raise ExportError(f"TorchScript export failed: {str(e).splitlines()[0][:300]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {f"{k}.txt": str(v) for k, v in (metadata or {}).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still the portable C++ format
        torch.jit.save(traced, str(path), _extra_files=extra)
    return path


def onnx_session(model: str | Path | bytes, threads: int = 1, device: str = "cpu", spin: bool = False):
    """An ONNX Runtime session: the CUDA provider when `device` is cuda and available, else CPU;
    `threads` intra-op threads (match the CPUs the process may use), one inter-op thread.

    `spin`: let idle pool threads busy-wait for the next op (ONNX Runtime's default). Off by
    default: in a Serve replica on 2 cores the spinning threads starved the proxy and the
    replica's own event loop (256 px p50 151 ms with 2 threads spinning, 86 ms without; 1024 px
    in-process 1.15 vs 1.11 s, no loss)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers are noise here
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=providers)


def spins(session) -> bool:
    """Whether an ONNX Runtime session's idle pool threads busy-wait (its default when unset)."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:  # never set: ONNX Runtime's default, spinning
        return True


def load_runner(path: Path, fmt: str, threads: int = 1):
    """A callable NCHW float32 tensor -> NCHW float32 tensor running the exported file."""
    if fmt == "onnx":
        session = onnx_session(path, threads)
        return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.contiguous().numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: scripted(x)


def parity(reference: nn.Module, run, sizes=PARITY_SIZES, channels: int = 3, seed: int = 0) -> dict[str, float]:
    """Max abs difference between `reference(x)` and `run(x)` per size -> {"NxHxW": diff}."""
    out = {}
    with torch.inference_mode():
        for i, (n, h, w) in enumerate(sizes):
            x = _sample(n, h, w, channels, seed + i)
            want = reference(x).float()
            got = run(x).float()
            if got.shape != want.shape:
                raise ExportError(f"exported model returned {tuple(got.shape)} for {tuple(x.shape)} "
                                  f"(PyTorch: {tuple(want.shape)})")
            out[f"{n}x{h}x{w}"] = float((got - want).abs().max())
    return out


def export(generator: nn.Module, fmt: str, path: str | Path, multiple: int = 1,
           metadata: dict[str, str] | None = None, tolerance: float = TOLERANCE,
           sizes=PARITY_SIZES, descriptor: GeneratorDescriptor | None = None) -> ExportResult:
    """Export `generator` (eval mode, CPU, float32) to `path` in `fmt` (onnx | torchscript),
    check it on `sizes` against PyTorch and return the differences. `descriptor` (what the
    registered generator is, `translator.descriptor`) gives the size multiple, the scale and the
    input channels; without one: `multiple` as given, the first convolution's channels, and the
    scale the generator shows on the example input (a super-resolution network is never taken
    for a same-size one and its output cut to the input's size).

    Raises ExportError for an unknown format, a failed export, or a max abs difference above
    `tolerance` (the file is removed then, so no unchecked export is left behind).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use {' or '.join(FORMATS)}")
    path = Path(path)
    scale, channels = 1, _in_channels(generator)
    if descriptor is not None:
        multiple, scale, channels = descriptor.size_multiple, descriptor.scale, descriptor.in_channels
    net = generator.float().cpu().eval()
    example = _sample(1, max(64, multiple), max(64, multiple), channels, seed=123)
    if descriptor is None:
        with torch.inference_mode():
            scale = max(1, net(example).shape[-1] // example.shape[-1])
    module = PadToMultiple(net, multiple, scale).eval()
    meta = {"multiple": str(multiple), "layout": "NCHW float32 in [-1, 1], any N/H/W", **(metadata or {})}
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            export_onnx(module, path, example, metadata=meta)
        else:
            export_torchscript(module, path, example, metadata=meta)
    try:
        diffs = parity(module, load_runner(path, fmt), sizes, channels)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    worst = max(diffs.values())
    if not worst <= tolerance:  # also catches NaN
        path.unlink(missing_ok=True)
        raise ExportError(f"{fmt} export differs from PyTorch by {worst:.2e} (max abs, [-1, 1] scale), "
                          f"over the {tolerance:.0e} tolerance; sizes: {diffs}")
    return ExportResult(path, fmt, worst, diffs, tolerance)


def _in_channels(generator: nn.Module) -> int:
    first = next((m for m in generator.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)), None)
    return int(first.in_channels) if first is not None else 3
