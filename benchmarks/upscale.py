"""4x super-resolution after the demo's CPU budget: the trained model against the classical
upscalers, and its latency per output megapixel on each CPU runtime.

Usage: python benchmarks/upscale.py [--budget 300] [--side 128,256] [--runs 3]
`img2img demo --task upscale` on the configured stack (ingest `down:4` pairs from the sample
photos, a 2-worker `srvgg` training job of `--budget` seconds, promotion, deployment, POST
/enhance of each held-out photo at its own resolution: the model's row). The same degraded
inputs (the demo's seeds) are then upscaled by bicubic (PyTorch, a=-0.75: the platform's
baseline, `translator.metrics.baseline`) and by Lanczos (Pillow's, 3 lobes, on 8-bit pixels) and
scored against the originals: PSNR of the pooled MSE over the photos, mean SSIM. Latency: the
registered version loaded as the endpoint loads it (`registry.loading.load`) with each runtime
forced, best of `--runs` calls on a random SIDE x SIDE input (output 4 SIDE a side), no codec
or HTTP. A model that already exists on the stack is reused (the demo's rule): use a fresh
stack (IMG2IMG_STATE_DIR) to measure from scratch.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402

RUNTIMES = (("torch", "fp32"), ("torch", "bf16"), ("onnx", "auto"))


def classical_rows(settings, result) -> list[list]:
    """Bicubic and Lanczos on the demo's own degraded held-out photos -> table rows."""
    from PIL import Image

    from img2img_demo.run import _bicubic, _held_out_photos, _photo, _score, dataset_degradation
    from translator import degrade, images

    spec = dataset_degradation(settings, result.dataset)
    n = degrade.scale_of(spec)
    scored = {r["photo"] for r in result.rows}
    sums = {"bicubic": [0.0, 0.0, 0], "lanczos": [0.0, 0.0, 0]}  # sse, ssim sum, values
    for i, path in enumerate(_held_out_photos(settings, result.dataset)):  # the demo's order: same seeds
        if path.name not in scored:
            continue
        clean = _photo(path)
        clean = clean[:clean.shape[0] - clean.shape[0] % n, :clean.shape[1] - clean.shape[1] % n]
        low = degrade.apply(spec, clean, seed=1000 + i)
        lanczos = images.to_array(images.from_array(low).resize((clean.shape[1], clean.shape[0]),
                                                                Image.Resampling.LANCZOS))
        for name, up in (("bicubic", _bicubic(low, clean.shape[:2])), ("lanczos", lanczos)):
            _, s, sse = _score(up, clean)
            sums[name][0] += sse
            sums[name][1] += s
            sums[name][2] += clean.size
    photos = len(scored)
    return [[label, 10 * math.log10(sums[k][2] / sums[k][0]), f"{sums[k][1] / photos:.4f}"]
            for k, label in (("bicubic", "bicubic (PyTorch, the baseline)"), ("lanczos", "Lanczos (Pillow)"))]


def latency_rows(settings, name: str, version: str, sides: list[int], runs: int) -> list[list]:
    """ms per output megapixel of version `version` on each runtime at each input side."""
    import torch

    from registry.loading import load

    rows = []
    for runtime, precision in RUNTIMES:
        model = load(settings.mlflow_uri, name, version, device="cpu", runtime=runtime, precision=precision)
        cells = []
        for side in sides:
            x = torch.rand(1, 3, side, side) * 2 - 1
            with torch.inference_mode():
                y = model.runtime.run(x)  # warm-up, and the output size
                best = float("inf")
                for _ in range(runs):
                    t0 = time.perf_counter()
                    model.runtime.run(x)
                    best = min(best, time.perf_counter() - t0)
            out_mp = y.shape[-1] * y.shape[-2] / 1e6
            cells.append(f"{best * 1000 / out_mp:.0f}")
        label = f"{runtime} {precision}" if runtime == "torch" else runtime
        rows.append([label, model.runtime.info().get("threads"), *cells])
    return rows


def main() -> None:
    from img2img_demo.run import run_demo

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--budget", type=float, default=300, help="training seconds (the demo's default, 300)")
    parser.add_argument("--side", default="128,256", help="input sides (px) the latency is measured at")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per runtime and side (best is kept)")
    args = parser.parse_args()
    sides = [int(s) for s in args.side.split(",")]
    settings = settings_with_stack()
    with tempfile.TemporaryDirectory(prefix="bench-upscale-") as out:
        result = run_demo(settings, task="upscale", budget_s=args.budget, out_dir=Path(out),
                          say=lambda m: print(f"[upscale] {m}", flush=True))
    m = result.mean
    rows = [*classical_rows(settings, result),
            [f"{result.model} v{result.version} (srvgg 4x, {args.budget:g} s)", m["output_psnr"],
             f"{m['output_ssim']:.4f}"]]
    photos = ", ".join(r["photo"] for r in result.rows)
    report("upscale", f"4x super-resolution after {args.budget:g} s of training: held-out photos",
           ["upscaler", "PSNR dB", "SSIM"], rows,
           notes=(f"{len(result.rows)} held-out sample photos ({photos}) at their own resolution, shrunk 4x "
                  "(`down:4`, bicubic with antialias) with the demo's seeds; PSNR of the pooled MSE, mean SSIM. "
                  "The model's row is the demo's own report (POST /enhance)."))
    report("upscale_latency", f"4x model latency per output megapixel, per runtime ({result.model} v{result.version})",
           ["runtime", "threads", *[f"ms / output MP, {s} px in -> {4 * s} px out" for s in sides]],
           latency_rows(settings, result.model, result.version, sides, args.runs),
           notes=f"Best of {args.runs} calls of the loaded runtime on one random input; no codec, tiling or HTTP.")


if __name__ == "__main__":
    main()
