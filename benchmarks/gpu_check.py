"""One short GPU check (run on a lent GPU machine, never in CI): training steps of pix2pix,
autoencoder and nafnet (GoPro preset) on 1 GPU with bf16 autocast on synthetic data, then tiled
inference of the GoPro nafnet at 1024x1024 and 4K. Pure PyTorch (translator/ only), so it runs
where Ray/MLflow are not installed. Prints JSON lines and a markdown table.

Usage: python benchmarks/gpu_check.py [--steps 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [
    ("pix2pix", {"netG": "unet_256"}, 256, 16),
    ("autoencoder", {}, 64, 64),
    ("nafnet", {"preset": "gopro"}, 256, 8),
    ("nafnet", {"preset": "tiny"}, 256, 32),
]


def train_case(name, cfg, size, batch, steps, amp):
    from translator.variants import build_variant

    torch.manual_seed(0)
    v = build_variant(name, cfg, device="cuda", amp=amp)
    x = torch.rand(batch, 3, size, size, device="cuda") * 2 - 1
    data = {"input": x, "target": x.flip(-1)}
    for _ in range(5):
        v.training_step(data)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        logs = v.training_step(data)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"variant": name, "config": cfg, "amp": amp, "image": size, "batch": batch, "steps": steps,
            "samples_per_s": steps * batch / dt, "ms_per_step": dt / steps * 1e3,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "finite": all(map(lambda f: f == f and abs(f) != float("inf"), logs.values()))}


@torch.inference_mode()
def infer_case(h, w, tile):
    from translator import tiling
    from translator.variants import build_variant

    g = build_variant("nafnet", {"preset": "gopro"}, device="cuda").generator.eval()
    img = torch.rand(1, 3, h, w)

    def fwd(t):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return g(t.cuda()).float().cpu()

    tiling.enhance(fwd, img[..., :256, :256], tile=tile)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = tiling.enhance(fwd, img, tile=tile, overlap=32, multiple=g.multiple, batch_size=8)
    torch.cuda.synchronize()
    return {"inference": f"{w}x{h}", "tile": tile, "seconds": time.perf_counter() - t0,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "same_size": tuple(out.shape) == tuple(img.shape)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results = [{"device": torch.cuda.get_device_name(0), "torch": torch.__version__}]
    print(json.dumps(results[0]), flush=True)
    for name, cfg, size, batch in CASES:
        for amp in ("bf16", None) if name != "autoencoder" else ("bf16",):
            r = train_case(name, cfg, size, batch, args.steps, amp)
            results.append(r)
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()
    for h, w in ((1024, 1024), (2160, 3840)):
        r = infer_case(h, w, 512)
        results.append(r)
        print(json.dumps(r), flush=True)
    lines = ["| variant | config | AMP | image | batch | samples/s | ms/step | peak GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results[1:]:
        if "variant" in r:
            lines.append(f"| {r['variant']} | {r['config']} | {r['amp'] or 'fp32'} | {r['image']} | {r['batch']} | "
                         f"{r['samples_per_s']:.1f} | {r['ms_per_step']:.1f} | {r['peak_gib']:.2f} |")
    lines += ["", "| tiled inference (nafnet gopro, bf16) | seconds | peak GiB |", "|---|---|---|"]
    lines += [f"| {r['inference']} | {r['seconds']:.2f} | {r['peak_gib']:.2f} |" for r in results if "inference" in r]
    print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=2))
        (Path(args.out) / "gpu_check.md").write_text(f"Device: {results[0]['device']}, torch {results[0]['torch']}\n\n"
                                                     + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
