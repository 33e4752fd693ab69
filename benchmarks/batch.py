"""Batch-job throughput against the endpoint path: images/s of `img2img batch` with 1 and 2
workers, and of a client-side loop through `POST /enhance` (what `img2img enhance` does) for the
same files at equal CPUs, side by side in one run.

Stores N synthetic photos (W x H, PNG) under s3://<IMG2IMG_BUCKET>/bench-batch/in/ (and in a
local temp folder), then for each worker count W:
- batch: the batch job (`jobs.batch.client`: submit through the admission, follow to the end)
  into a fresh output prefix, W workers of 1 CPU; its own images/s (outputs written per wall
  second of the job, model load and listing included), and its steady state (workers / the
  workers' own seconds per image: reading, model and writing, the job's start left out);
- endpoint: the model deployed on the endpoint with W replicas of 1 CPU, torch fp32 (as the
  batch runs it), and the local files sent by `serving.client.enhance_files` with 2 x W requests
  in flight, outputs written locally; images/s over the loop's wall time (the deploy, i.e. the
  model load, not included).
The ratio is batch / endpoint images/s; the steady ratio, batch steady / endpoint. NOTE: it removes the stack's endpoint
before each batch run and redeploys it with the benchmarked model for the endpoint run.

Run (a stack up, a registered model): `python benchmarks/batch.py --model NAME/VERSION [--images 24] [--size 256]`
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file


def batch_rate(settings, model: str, workers: int) -> dict:
    from jobs.batch import client
    from serving.deploy import remove

    remove(settings)  # the endpoint's replicas would hold CPUs the batch job's workers need (equal CPUs)
    out = f"bench-batch/out-{workers}w-{int(time.time())}/"
    req = client.prepare(settings, f"s3://{settings.bucket}/bench-batch/in/", f"s3://{settings.bucket}/{out}",
                         model, workers=workers)
    summary = client.follow(settings, client.submit(settings, req))
    # steady state: the workers' own seconds per image (reading, model, writing), without the
    # job's start (actors loading the model, Ray Data's start, listing, the MLflow run)
    per_image = summary["seconds_per_megapixel"] * summary["megapixels"] / max(1, summary["written"])
    return {"images": summary["written"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"],
            "steady_images_per_s": round(workers / per_image, 2) if per_image else None}


def endpoint_rate(settings, model: str, workers: int, files: list[Path], out_dir: Path) -> dict:
    from serving.client import enhance_files
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    info = deploy(settings, model, ReplicaOptions(runtime="torch", precision="fp32"),
                  Scaling(min_replicas=workers, max_replicas=workers, num_cpus=1), wait_s=600)
    t0 = time.perf_counter()
    outcomes = enhance_files(files, out_dir, info["url"], parallel=2 * workers)
    seconds = time.perf_counter() - t0
    ok = sum(o.error is None for o in outcomes)
    return {"images": ok, "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 3)}


def main() -> None:
    import numpy as np
    from PIL import Image

    from cluster.settings import get_settings
    from cluster.storage import Storage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    settings = get_settings()
    store = Storage(settings)
    rng = np.random.default_rng(0)
    local = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    files = []
    for i in range(args.images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(buf, "PNG")
        store.put_bytes(f"bench-batch/in/{i:04d}.png", buf.getvalue())
        files.append(local / "in" / f"{i:04d}.png")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(buf.getvalue())
    results = []
    for workers in args.workers:
        b = batch_rate(settings, args.model, workers)
        e = endpoint_rate(settings, args.model, workers, files, local / f"out-{workers}w")
        results.append({"workers": workers, "batch": b, "endpoint": e,
                        "ratio": round(b["images_per_s"] / e["images_per_s"], 2) if e["images_per_s"] else None,
                        "steady_ratio": round(b["steady_images_per_s"] / e["images_per_s"], 2)
                        if e["images_per_s"] and b["steady_images_per_s"] else None})
    print(json.dumps({"size": args.size, "results": results}))
    print("| workers (1 CPU each) | images | batch s | batch images/s | batch steady images/s | endpoint s "
          "| endpoint images/s | ratio | steady ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        b, e = r["batch"], r["endpoint"]
        print(f"| {r['workers']} | {b['images']} | {b['seconds']:.1f} | {b['images_per_s']:.2f} | "
              f"{b['steady_images_per_s']} | {e['seconds']:.1f} | {e['images_per_s']:.2f} | {r['ratio']} | "
              f"{r['steady_ratio']} |")


if __name__ == "__main__":
    main()
