"""How a loaded generator runs on this machine: `torch` or `onnx` (ONNX Runtime). `auto` is torch
on a GPU; on a CPU, `registry.loading.load` builds ONNX Runtime, torch channels_last fp32 and (where
it is native and precise enough) torch bf16, times them on the loaded model (`fastest_per_size`:
a 256 px image and one 512 px tile), then runs each image size on the fastest (`build` alone maps
auto to onnx on a CPU).

torch runs channels_last by default (NAFNet's LayerNorm2d permutes to NHWC and back, which
channels_last makes free) and, with `precision="auto"`, under bf16 autocast only where the
CPU has native bf16 (avx512_bf16 / AMX, read from the CPU flags, never assumed) or on CUDA,
and only when a measurement on the loaded model shows bf16 faster and within one 8-bit level
(2/255 on the [-1, 1] scale) of fp32. `precise=True` calls (16-bit images) always run fp32.

onnx exports the generator (translator.export, parity-checked) and runs it on ONNX Runtime:
the CUDA provider when a GPU is present, else the CPU provider.

Threads: torch's intra-op pool is process-wide; a replica that reserves N CPUs sets it to
max(1, floor(N)), and ONNX Runtime's session gets the same number.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from translator import MEMORY_FORMATS, PRECISIONS, RUNTIMES, export
from translator.descriptor import GeneratorDescriptor
from translator.precision import cpu_flags, cpu_has_native_bf16  # noqa: F401  (re-exported)

ONE_8BIT_LEVEL = 2.0 / 255.0
BF16_MIN_SPEEDUP = 1.1  # `--runtime torch --precision auto`: bf16 must be at least this much faster
DISPLACE_BF16 = 1.1  # `--runtime auto`: another runtime must be this much faster than bf16 to be chosen


def threads_for(num_cpus: float | None) -> int:
    """Intra-op threads for a process reserving `num_cpus` CPUs (None: all of this machine's)."""
    if num_cpus is None:
        return os.cpu_count() or 1
    return max(1, int(math.floor(num_cpus)))


def _sample(size: int = 256) -> torch.Tensor:
    return export._sample(1, size, size, 3, seed=11)


@dataclass
class Runtime:
    """A generator ready to run: `run(batch, precise)` takes N x 3 x H x W float32 in [-1, 1]
    (H, W multiples of the net's stride; tiling pads) and returns float32 NCHW on the CPU."""

    name: str
    threads: int
    device: str
    memory_format: str = "contiguous"
    precision: str = "fp32"
    run_fast: Callable[[torch.Tensor], torch.Tensor] | None = None
    run_fp32: Callable[[torch.Tensor], torch.Tensor] | None = None
    check: dict = field(default_factory=dict)  # how the precision was chosen (ms, max abs diff)

    def run(self, batch: torch.Tensor, precise: bool = False) -> torch.Tensor:
        return (self.run_fp32 if precise else self.run_fast)(batch)

    def info(self) -> dict:
        return {"runtime": self.name, "threads": self.threads, "memory_format": self.memory_format,
                "precision": self.precision, "precision_check": self.check}


def _torch_runner(generator: torch.nn.Module, device: str, memory_format: str, bf16: bool):
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=fmt)
        if bf16:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                y = generator(x)
        else:
            y = generator(x)
        return y.float().cpu().contiguous()

    return run


def _best_ms(fns: list[Callable], x: torch.Tensor, reps: int = 3, budget_s: float | None = None,
             min_reps: int = 3) -> list[float]:
    """Fastest of `reps` runs of each fn, interleaved, so a busy machine slows all alike. With
    `budget_s`, rounds stop early once `min_reps` are done and the rounds took that long."""
    for fn in fns:
        fn(x)  # warm-up (oneDNN primitive creation)
    best = [math.inf] * len(fns)
    start = time.perf_counter()
    for r in range(reps):
        if budget_s is not None and r >= min_reps and time.perf_counter() - start > budget_s:
            break
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(x)
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
    return best


def bf16_max_abs_diff(fp32: Callable, bf16: Callable, sample: torch.Tensor) -> float:
    """Largest |fp32(sample) - bf16(sample)| on the [-1, 1] scale (one 8-bit level: 2/255)."""
    return float((fp32(sample) - bf16(sample)).abs().max())


def choose_bf16(fp32: Callable, bf16: Callable, sample: torch.Tensor) -> tuple[bool, dict]:
    """bf16 if it is >= BF16_MIN_SPEEDUP x faster than fp32 on `sample` and its output stays
    within one 8-bit level (2/255 on [-1, 1]) of fp32 -> (use bf16, the measurement)."""
    # 5 interleaved rounds, not 3: at 3, on busy cores, a replica chose fp32 for the demo model
    # while in-process it chose bf16 (benchmarks/RESULTS.md serving table), and the choice flipped
    # from run to run; on idle cores its bf16 was 1.5x faster (256 px: 48 vs 74 ms).
    ms32, ms16 = _best_ms([fp32, bf16], sample, reps=5)
    diff = bf16_max_abs_diff(fp32, bf16, sample)
    use = ms16 * BF16_MIN_SPEEDUP <= ms32 and diff <= ONE_8BIT_LEVEL
    return use, {"fp32_ms": round(ms32, 1), "bf16_ms": round(ms16, 1), "bf16_max_abs_diff": round(diff, 5),
                 "sample": f"{sample.shape[-2]}x{sample.shape[-1]}"}


# Image sizes the `auto` runtime is timed at on a CPU: 256 px stands for small images, and 512 px
# is one default tile (translator.TILE), which is what every larger image runs as.
CHOICE_SIZES = (256, 512)


def fastest_per_size(candidates: list[Runtime], sizes: tuple[int, ...] = CHOICE_SIZES,
                     reps: int = 10, budget_s: float = 1.5) -> tuple[dict[int, Runtime], dict]:
    """Each candidate timed on a `size` x `size` sample per size (best of `reps`, all candidates
    interleaved, so a busy machine slows all alike; at least 3 rounds, fewer than `reps` once the
    rounds at a size took `budget_s`: 256 px gets ~10, a 512 px tile ~3) -> ({size: the runtime to
    use}, {"256x256": {"onnx fp32": ms, "torch bf16": ms, ...}, ...}) for `GET /model`. The
    fastest is used, except that a bf16 runtime keeps the size unless another is
    `DISPLACE_BF16` x faster (`_choose`). Raises ValueError for no candidates."""
    if not candidates:
        raise ValueError("no runtime to choose from")
    chosen, report = {}, {}
    for size in sizes:
        ms = _best_ms([c.run for c in candidates], _sample(size), reps=reps, budget_s=budget_s)
        chosen[size] = candidates[_choose(candidates, ms)]
        report[f"{size}x{size}"] = {f"{c.name} {c.precision}": round(t, 1) for c, t in zip(candidates, ms)}
    return chosen, report


def _choose(candidates: list[Runtime], ms: list[float]) -> int:
    """Index of the runtime to use given each one's time `ms`: the fastest, except that a bf16
    runtime keeps the size unless another is DISPLACE_BF16 x faster. bf16 is a candidate only
    where the CPU computes it natively and its output stayed within one 8-bit level of fp32 on
    this model, and there it has been the fastest in every quiet measurement (a 2-CPU replica:
    34-36 ms against 42-54 ms at 256 px). Timed once at start on a busy machine, near-ties go
    to runtimes that then serve 15-30% slower (2 of 5 starts measured without this margin)."""
    fastest = min(range(len(ms)), key=ms.__getitem__)
    bf16 = next((i for i, c in enumerate(candidates) if c.precision == "bf16"), None)
    if bf16 is not None and ms[fastest] * DISPLACE_BF16 > ms[bf16]:
        return bf16
    return fastest


def cpu_candidates(generator: torch.nn.Module, threads: int, onnx: Runtime) -> tuple[list[Runtime], dict]:
    """What `auto` times on a CPU: `onnx` (ONNX Runtime), torch channels_last fp32 and, where the
    CPU has native bf16 and bf16 autocast stays within one 8-bit level of fp32 on this model,
    torch channels_last bf16 -> (candidates, {"bf16_max_abs_diff": d} or why bf16 is left out).
    The torch runtimes share `generator` (moved to channels_last in place)."""
    fp32 = torch_runtime(generator, threads, "cpu", "channels_last", "fp32")
    if not cpu_has_native_bf16():
        return [onnx, fp32], {"bf16": "no native bf16 on this CPU"}
    bf16 = torch_runtime(generator, threads, "cpu", "channels_last", "bf16")
    sample = _sample()
    diff = round(bf16_max_abs_diff(fp32.run, bf16.run, sample), 5)
    bf16.check = {"bf16_max_abs_diff": diff, "sample": f"{sample.shape[-2]}x{sample.shape[-1]}"}
    if diff > ONE_8BIT_LEVEL:  # e.g. the EMA-trained demo model measured 0.0094 > 0.0078
        return [onnx, fp32], {"bf16_max_abs_diff": diff, "bf16": "over one 8-bit level from fp32"}
    return [onnx, fp32, bf16], {"bf16_max_abs_diff": diff}


def torch_runtime(generator: torch.nn.Module, threads: int, device: str = "cpu",
                  memory_format: str = "channels_last", precision: str = "auto",
                  sample: torch.Tensor | None = None) -> Runtime:
    """The generator on PyTorch. `precision` auto | fp32 | bf16 (bf16 forced: no checks)."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "cpu":
        torch.set_num_threads(threads)
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    generator = generator.to(device=device, memory_format=fmt).eval()
    fp32 = _torch_runner(generator, device, memory_format, bf16=False)
    bf16 = _torch_runner(generator, device, memory_format, bf16=True)
    chosen, check = precision, {}
    if precision == "auto":
        native = device.startswith("cuda") or cpu_has_native_bf16()
        if native:
            use, check = choose_bf16(fp32, bf16, sample if sample is not None else _sample())
        else:
            use, check = False, {"skipped": "no native bf16 on this CPU"}
        chosen = "bf16" if use else "fp32"
    return Runtime("torch", threads, device, memory_format, chosen, bf16 if chosen == "bf16" else fp32, fp32, check)


def onnx_runtime(generator: torch.nn.Module, multiple: int, threads: int, device: str = "cpu",
                 onnx_file: Path | None = None, descriptor: GeneratorDescriptor | None = None) -> Runtime:
    """The generator on ONNX Runtime: from `onnx_file` (an export logged to the registry) or
    exported here (parity-checked against PyTorch first; see translator.export). `descriptor`:
    what the generator is (its scale above all: without it the export is taken as same-size and a
    super-resolution network's output is cut to the input's size)."""
    if onnx_file is None:
        with tempfile.TemporaryDirectory() as d:
            result = export.export(generator.cpu(), "onnx", Path(d) / "model.onnx", multiple, descriptor=descriptor)
            data = result.path.read_bytes()
        check = {"exported_here": True, "max_abs_diff": result.max_abs_diff}
    else:
        data, check = Path(onnx_file).read_bytes(), {"exported_here": False}
    session = export.onnx_session(data, threads, device, spin=False)  # see onnx_session: spinning starved Serve
    check["providers"] = session.get_providers()
    check["spin_wait"] = export.spins(session)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run([export.OUTPUT], {export.INPUT: x.float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return Runtime("onnx", threads, "cuda" if "CUDAExecutionProvider" in check["providers"] else "cpu",
                   "contiguous", "fp32", run, run, check)


def build(generator: torch.nn.Module, multiple: int, runtime: str = "torch", threads: int | None = None,
          device: str = "cpu", memory_format: str = "channels_last", precision: str = "auto",
          onnx_file: Path | None = None, descriptor: GeneratorDescriptor | None = None) -> Runtime:
    """A Runtime of kind `runtime` (auto | torch | onnx) with `threads` intra-op threads (None: all
    CPUs); `descriptor` (`translator.descriptor`): the generator's scale and channels, which an
    ONNX export needs. Raises ValueError for an unknown runtime, memory format or precision."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be auto, torch or onnx, got {runtime!r}")
    if runtime == "auto":  # the measured best per device; GPU defaults await the GPU check
        runtime = "torch" if device.startswith("cuda") else "onnx"
    threads = threads or threads_for(None)
    if runtime == "onnx":
        if device == "cpu":
            torch.set_num_threads(threads)  # tiling and the codec still use torch
        return onnx_runtime(generator, multiple, threads, device, onnx_file, descriptor)
    return torch_runtime(generator, threads, device, memory_format, precision)
