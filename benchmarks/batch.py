"""Batch-job throughput: images/s of `img2img batch` with 1 and 2 workers on the running stack.

Stores N synthetic photos (W x H, PNG) under s3://<IMG2IMG_BUCKET>/bench-batch/in/, then runs the
batch job (`jobs.batch.client`: submit through the admission, follow to the end) into a fresh
output prefix per worker count, and prints the job's own images/s (outputs written per wall
second of the job, model load and listing included) as JSON and a markdown table.

Run (a stack up, a registered model): `python benchmarks/batch.py --model NAME/VERSION [--images 24] [--size 256]`
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a file: the repository first, and not this folder (its queue.py would shadow the stdlib's)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]


def main() -> None:
    import numpy as np
    from PIL import Image

    from cluster.settings import get_settings
    from cluster.storage import Storage
    from jobs.batch import client

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    settings = get_settings()
    store = Storage(settings)
    rng = np.random.default_rng(0)
    for i in range(args.images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(buf, "PNG")
        store.put_bytes(f"bench-batch/in/{i:04d}.png", buf.getvalue())
    results = []
    for workers in args.workers:
        out = f"bench-batch/out-{workers}w-{int(time.time())}/"
        req = client.prepare(settings, f"s3://{settings.bucket}/bench-batch/in/", f"s3://{settings.bucket}/{out}",
                             args.model, workers=workers)
        summary = client.follow(settings, client.submit(settings, req))
        results.append({"workers": workers, "images": summary["written"], "seconds": summary["seconds"],
                        "images_per_s": summary["images_per_s"]})
    print(json.dumps({"size": args.size, "results": results}))
    print("| workers | images | seconds | images/s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
