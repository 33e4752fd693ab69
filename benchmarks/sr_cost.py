"""Why `srvgg` is the built-in super-resolution network on CPUs: parameters, multiply-adds and
measured CPU latency per OUTPUT megapixel of its generator at 2x and 4x, against the same-size
restorer (`nafnet` tiny) run on a bicubic upscale of the input (the other way to make an upscaler
out of what the platform had).

Usage: python -m benchmarks.sr_cost [--side 128] [--runs 3] [--threads 2]
Untrained networks (latency does not depend on the weights); fp32, torch, no tiling; the input
is SIDE x SIDE and the output SIDE*scale a side. Multiply-adds are counted per conv/linear layer
with forward hooks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report  # noqa: E402


def macs(net, x) -> int:
    """Multiply-adds of the conv layers for input `x` (hooks on every nn.Conv2d)."""
    import torch

    total = 0

    def hook(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    return total


def main() -> None:
    import torch
    import torch.nn.functional as F

    from translator.nets.common import count_parameters
    from translator.variants import build_variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128, help="input side in px")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for scale in (2, 4):
        x = torch.rand(1, 3, args.side, args.side) * 2 - 1
        out_mp = (args.side * scale) ** 2 / 1e6
        cands = {
            f"srvgg {scale}x (num_feat 32, num_conv 8)": (build_variant("srvgg", {"scale": scale}).generator, x),
            f"nafnet tiny on bicubic {scale}x": (build_variant("nafnet").generator,
                                                 F.interpolate(x, scale_factor=scale, mode="bicubic")),
        }
        for label, (net, inp) in cands.items():
            net.eval()
            with torch.inference_mode():
                net(inp)  # warm-up
                best = float("inf")
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    net(inp)
                    best = min(best, time.perf_counter() - t0)
            rows.append([label, f"{count_parameters(net):,}", f"{macs(net, inp) / 1e9 / out_mp:.1f}",
                         f"{best / out_mp:.2f}"])
    report("sr_cost", "Super-resolution generators: cost per output megapixel (CPU, fp32)",
           ["generator", "parameters", "GMAC / output MP", "seconds / output MP"], rows,
           notes=f"input {args.side}x{args.side}, {args.threads} torch threads, best of {args.runs} runs")


if __name__ == "__main__":
    main()
