"""Serving latency and throughput: p50/p95/p99 and images/s for 256x256 and 1024x1024 inputs at
concurrency 1, 8 and 32, against the bare in-process model on the same inputs, with cross-request
batching off (max batch 1) and on (max batch 8).

Usage: python benchmarks/serve_latency.py [--model NAME@champion]  (default: the demo's model)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import percentile, report, settings_with_stack  # noqa: E402

SIZES = {256: 48, 1024: 12}  # requests per concurrency level
LEVELS = (1, 8, 32)


def _image(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def _load(url: str, body: bytes, n: int, concurrency: int) -> tuple[list[float], float]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=600) as client:
        async def one():
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(url + "/enhance", content=body, headers={"Content-Type": "image/png"},
                                      params={"tile": 256, "overlap": 16})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return latencies, n / (time.perf_counter() - t0)


def bare(settings, model: str, body: bytes, n: int) -> tuple[list[float], float]:
    from serving import codec
    from serving.model import load, resolve

    name, version = resolve(settings.mlflow_uri, model)
    m = load(settings.mlflow_uri, name, version)
    lat = []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        decoded = codec.decode(body, 16_000_000)
        codec.encode(m.enhance(decoded.tensor, tile=256, overlap=16), decoded)
        lat.append(time.perf_counter() - t0)
    return lat, n / (time.perf_counter() - t_all)


def main() -> None:
    from serving.deploy import deploy

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo-photos-nafnet@champion")
    args = parser.parse_args()
    settings = settings_with_stack()
    rows = []
    for size, n in SIZES.items():
        body = _image(size)
        lat, rate = bare(settings, args.model, body, max(4, n // 4))
        rows.append([f"{size}x{size}", "in-process", 1, percentile(lat, 50) * 1e3, percentile(lat, 95) * 1e3,
                     percentile(lat, 99) * 1e3, rate, 1.0])
        base_p50 = percentile(lat, 50)
        for batching, max_batch in (("off", 1), ("on", 8)):
            deploy(settings, args.model, min_replicas=1, max_replicas=1, max_batch_size=max_batch, num_cpus=1)
            asyncio.run(_load(settings.serve_url, body, 2, 1))  # warm-up
            for c in LEVELS:
                lat, rate = asyncio.run(_load(settings.serve_url, body, n if c > 1 else max(4, n // 4), c))
                rows.append([f"{size}x{size}", f"Serve, batching {batching}", c, percentile(lat, 50) * 1e3,
                             percentile(lat, 95) * 1e3, percentile(lat, 99) * 1e3, rate,
                             percentile(lat, 50) / base_p50])
    report("serve_latency", f"Serving latency ({args.model}, 1 replica, 256 px tiles)",
           ["input", "path", "concurrency", "p50 ms", "p95 ms", "p99 ms", "images/s", "p50 / in-process p50"],
           rows, notes="At concurrency > 1 the p50 includes queueing behind other requests on one replica.")


if __name__ == "__main__":
    main()
