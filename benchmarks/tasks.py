"""What the demo's CPU budget buys for each translation task (`img2img demo --task ...`):
input-vs-target and output-vs-target PSNR/SSIM on the held-out sample photos, plus one grid
(input | output | original, a 256 px centre crop of one held-out photo per task).

Usage: python benchmarks/tasks.py [--tasks deblur,colorize,sketch,restore] [--budget 300] [--quick]
Each task is the real demo path on the configured stack (ingest, a 2-worker training job of
`--budget` seconds, promotion, deployment, POST /enhance at the photos' own resolution). A task
whose model already has a version trained on the same data with the same settings is reused (the
demo's rule): use a fresh stack (IMG2IMG_STATE_DIR) to measure from scratch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import OUT, report, settings_with_stack  # noqa: E402

CROP = 256


def _crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(CROP, h, w)
    return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def grid_row(settings, result) -> list:
    """[input, output, original] PIL images: the centre crop of the first scored held-out photo,
    degraded with the dataset's spec and enhanced through the endpoint."""
    import io

    from PIL import Image

    from img2img_demo.run import _held_out_photos, _photo, dataset_degradation
    from serving.client import enhance_bytes
    from translator import degrade, images

    spec = dataset_degradation(settings, result.dataset)
    paths = _held_out_photos(settings, result.dataset)
    i, path = next((i, p) for i, p in enumerate(paths) if p.name == result.rows[0]["photo"])
    clean = _crop(_photo(path))
    degraded = degrade.apply(spec, clean, seed=1000 + i)
    data, _ = enhance_bytes(settings.serve_url, images.encode(images.from_array(degraded), "PNG"), "image/png")
    return [images.from_array(degraded), Image.open(io.BytesIO(data)).convert("RGB"), images.from_array(clean)]


def main() -> None:
    from img2img_demo.run import run_demo
    from img2img_demo.tasks import DEMO_TASKS, demo_task

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=",".join(DEMO_TASKS), help="comma-separated demo tasks")
    parser.add_argument("--budget", type=float, default=None, help="training seconds (default: the demo's, 300)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick datasets and 120 s budget")
    parser.add_argument("--tag", default="", help="suffix for the result table's name, e.g. quick")
    args = parser.parse_args()
    tasks = [demo_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    budget = args.budget or (120 if args.quick else 300)
    settings = settings_with_stack()
    rows, grid_rows, labels = [], [], []
    for task in tasks:
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f"bench-{task.name}-") as out:
            result = run_demo(settings, task=task.name, quick=args.quick, budget_s=budget, out_dir=Path(out),
                              say=lambda m, n=task.name: print(f"[{n}] {m}", flush=True))
        m = result.mean
        spec = task.quick_spec if args.quick else task.spec
        trained = " ".join(f"{k}={v}" for k, v in result.config.items())  # the task's recipe, its CPU settings
        rows.append([task.name, f"{task.variant} ({trained})" if trained else task.variant, f"`{spec}`",
                     f"{budget:g} s", len(result.rows),
                     m["input_psnr"], f"{m['input_ssim']:.4f}", m["output_psnr"], f"{m['output_ssim']:.4f}",
                     m["output_psnr"] - m["input_psnr"], f"{m['output_ssim'] - m['input_ssim']:+.4f}",
                     f"{time.time() - t0:.0f} s"])
        grid_rows.append(grid_row(settings, result))
        labels.append(f"{task.name}: {result.rows[0]['photo']}")
        print(f"[{task.name}] input {m['input_psnr']:.2f} dB / {m['input_ssim']:.4f} -> output "
              f"{m['output_psnr']:.2f} dB / {m['output_ssim']:.4f}", flush=True)
        write(args, budget, rows, grid_rows, labels)  # after every task: a long run stopped early keeps its rows


def write(args, budget: float, rows: list, grid_rows: list, labels: list) -> None:
    from translator import images

    suffix = f"_{args.tag}" if args.tag else ""
    OUT.mkdir(exist_ok=True)
    grid_file = OUT / f"tasks_grid{suffix}.png"
    images.grid(grid_rows, labels=["input", "output", "original (target)"]).save(grid_file)
    report(f"tasks{suffix}", f"Demo tasks at the demo's CPU budget ({budget:g} s of training, 2 workers): held-out photos",
           ["task", "variant", "degradation", "budget", "photos", "input PSNR", "input SSIM", "output PSNR",
            "output SSIM", "PSNR gain dB", "SSIM gain", "demo wall time"], rows,
           notes=(f"Rows of the grid `out/{grid_file.name}` (256 px centre crops, one held-out photo per task: "
                  f"{'; '.join(labels)}): input | output | original. Scores are over the whole held-out photos at "
                  "their own resolution through POST /enhance, exactly as `img2img demo --task T` reports them; "
                  "colorize scores only the colour photos (a grey photo stays itself).\n\n"
                  f"![input | output | original per task](out/{grid_file.name})"))


if __name__ == "__main__":
    main()
