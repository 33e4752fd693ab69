"""Memory of camera-sized photos on a replica (and `enhance --local`): what sizes the default
pixel limit (serving/options.py: ReplicaOptions.max_pixels).

Two numbers, each measured in a fresh process as the growth of its peak resident memory (Linux
`ru_maxrss`):
- per request: one photo of W x H through the replica's one-request path
  (`translator.compute.enhance_alone`: decode, tiles through the model one at a time, merge, PNG encode)
  with a 1x1-conv stand-in model, so only the whole-image buffers count (bytes per pixel);
- per tile: one 512 x 512 tile through the `nafnet` presets' generators (untrained: the
  activations do not depend on the weights), fp32 torch, the tile's activations.

Run: `python benchmarks/large_photos.py` (no stack needed; ~2 minutes on 2 cores).
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file by run_all.py
PHOTOS = [(4000, 3000), (6000, 4000), (8192, 5464)]  # 12 MP phone, 24 MP camera, 45 MP camera
PRESETS = ["tiny", "width32"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_photo(width: int, height: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from registry.loading import LoadedModel
    from translator.compute import enhance_alone

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    body = buf.getvalue()
    model = LoadedModel(torch.nn.Conv2d(3, 3, 1), "standin", "1", "standin", 1)
    enhance_alone(b"" + _small_png(), 10**9, model, "AtoB", "png", 512, 32)  # warm-up
    before = _peak_mb()
    enhance_alone(body, 10**9, model, "AtoB", "png", 512, 32)
    grown = _peak_mb() - before
    return {"photo": f"{width}x{height}", "megapixels": width * height / 1e6, "peak_growth_mb": grown,
            "bytes_per_pixel": grown * 2**20 / (width * height)}


def _small_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    return buf.getvalue()


def measure_tile(preset: str, tile: int = 512) -> dict:
    import torch

    from translator.variants import get_variant

    net = get_variant("nafnet").from_config({"preset": preset}).generator.eval()
    with torch.inference_mode():
        net(torch.zeros(1, 3, 64, 64))
        before = _peak_mb()
        net(torch.zeros(1, 3, tile, tile))
    return {"preset": preset, "tile": tile, "peak_growth_mb": _peak_mb() - before}


def _child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.large_photos", kind, *map(str, args)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.common import report
    from serving.options import DEFAULTS

    limit = DEFAULTS.max_pixels
    photos = [_child("photo", w, h) for w, h in PHOTOS]
    tiles = [_child("tile", p) for p in PRESETS]
    rows = [[p["photo"], round(p["megapixels"], 1), round(p["peak_growth_mb"]), round(p["bytes_per_pixel"], 1)]
            for p in photos]
    per_px = max(p["bytes_per_pixel"] for p in photos)
    notes = ("Per 512 x 512 tile (fp32 torch, activations): "
             + ", ".join(f"nafnet {t['preset']} {t['peak_growth_mb']:.0f} MB" for t in tiles)
             + f". At {per_px:.0f} bytes per pixel a photo at the default limit ({limit / 1e6:.0f} MP) needs "
               f"~{per_px * limit / 2**30:.1f} GB per request in flight, on top of the model and one tile's "
               "activations.")
    report("large_photos", "Peak memory of one camera-sized photo (one request, 512 px tiles)",
           ["photo", "MP", "peak growth MB", "bytes / pixel"], rows, notes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "photo":
        print(json.dumps(measure_photo(int(sys.argv[2]), int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "tile":
        print(json.dumps(measure_tile(sys.argv[2])))
    else:
        main()
