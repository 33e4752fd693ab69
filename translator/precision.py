"""What this machine computes fast: native bf16 on the CPU is detected, never assumed.

Used by training (bf16 autocast + channels_last on CPUs with native bf16) and by serving
(`--precision auto`). Pure PyTorch and the standard library.
"""

from __future__ import annotations

import contextlib

import torch


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or AMX-BF16) and torch's kernels
    use those instructions (its CPU capability is AVX512 or better); emulated bf16 is slower."""
    capability = torch.backends.cpu.get_cpu_capability()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and capability.startswith("AVX512")


def training_precision(requested: str, device_type: str, native_bf16: bool | None = None) -> tuple[str | None, bool]:
    """How to train: `requested` "auto" | "fp32" | "bf16" on `device_type` "cuda" | "cpu" ->
    (amp for `Variant`: "bf16" or None, channels_last: bool).

    auto: bf16 autocast on CUDA; on a CPU, bf16 autocast + channels_last where the CPU has
    native bf16 (measured on 2 cores of such a CPU, nafnet-tiny batch 16 at 64 px: 75 samples/s
    fp32 NCHW, 124 with both), fp32 NCHW elsewhere. fp32: always fp32 NCHW. bf16: bf16 even
    where it is emulated (slower; for checking a run matches a bf16 machine's).
    native_bf16: the CPU's capability (None: detect with `cpu_has_native_bf16`).
    Raises ValueError for any other `requested`."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    if requested == "fp32":
        return None, False
    if device_type == "cuda":
        return "bf16", False
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if requested == "bf16" or native:
        return "bf16", True
    return None, False


@contextlib.contextmanager
def strict_fp32(device_type: str):
    """fp32 as written: on CUDA, no TF32 in convolutions (cuDNN allows it by default, a 10-bit
    mantissa) or matmuls while inside; nothing to change on a CPU. Validation and `img2img eval`
    both score inside it, so their numbers agree wherever each runs."""
    if device_type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
