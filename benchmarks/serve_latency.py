"""Serving latency and throughput, every runtime side by side in ONE run (so a busy machine
slows all alike; compare ratios, not absolute times): p50/p95 and images/s for 256x256 and
1024x1024 PNGs of a photo (codec included).

The baseline, labelled "(today)" in the tables, is a plain PyTorch script: NCHW fp32, PNG at
Pillow's default zlib level 6, glibc's malloc defaults. Every other row encodes PNG at the
platform's level 1 and keeps freed memory in the process (translator/allocator.py), as the
platform does. --interleaved runs all its rows at glibc's defaults.

In-process: the baseline (all CPUs), channels_last fp32, channels_last bf16 (where the CPU has
native bf16), ONNX Runtime; plus a tile-size sweep at 1024x1024.
Serve (1 replica): the baseline configuration (NCHW fp32, 1 CPU, batching on), and torch NCHW /
torch channels_last + auto precision / ONNX Runtime on 2 CPUs, batching off and on, at
concurrency 1 and 16. Also reports the torch threads a replica gets from Ray at num_cpus 0.5.

Usage: python benchmarks/serve_latency.py [--model NAME@champion]  (default: the demo's model)
       python benchmarks/serve_latency.py --interleaved [--size 256] [--rounds 5]
           in-process runtimes only, run round-robin (one request each per round), so machine-wide
           contention hits every runtime alike: the ratios survive a busy shared machine.
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
from translator.allocator import retain_freed_memory  # noqa: E402

SIZES = (256, 1024)
# (size, concurrency) -> requests. Small, so the whole matrix fits in ~20 minutes on 2 busy cores;
# a 1024x1024 run at concurrency 16 sends 8 requests, so at most 8 are in flight (the table says so):
# one compute-bound replica's throughput does not depend on the queue depth beyond that.
REQUESTS = {(256, 1): 5, (256, 16): 16, (1024, 1): 2, (1024, 16): 8}
LEVELS = (1, 16)
TILES = (256, 512, 1024)
CPUS = 2  # per replica for the new configurations (this machine has 2 cores)


def _image(size: int) -> bytes:
    """A size x size PNG of a real photo (scikit-image's astronaut, resampled): PNG coding costs
    depend on content, and uniform noise, which never compresses, hid that cost."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


# The baseline rows, labelled "(today)", write PNGs at Pillow's default zlib level, as a plain
# PyTorch + Pillow script does.
TODAY_PNG_LEVEL = 6


def replica_seconds(server_timing: str) -> float:
    """The time a replica spent on a request (decode + model + encode), in seconds, from its
    `Server-Timing` header (`decode;dur=1.2, model;dur=44.0, ...`, milliseconds)."""
    total = 0.0
    for part in server_timing.split(","):
        for field in part.split(";")[1:]:
            if field.strip().startswith("dur="):
                total += float(field.strip()[4:]) / 1000
    return total


async def _load(url: str, body: bytes, n: int, concurrency: int) -> tuple[list[float], float, dict]:
    """n POSTs of `body`, `concurrency` in flight -> (latencies s, images/s, the X-Model-* headers
    plus "replica_s": each request's time inside the replica, from Server-Timing)."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    headers: dict = {"replica_s": []}
    async with httpx.AsyncClient(timeout=900) as client:
        async def one():
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(url + "/enhance", content=body, headers={"Content-Type": "image/png"})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                headers.update({k: v for k, v in r.headers.items() if k.startswith("x-model")})
                headers["replica_s"].append(replica_seconds(r.headers.get("server-timing", "")))

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return latencies, n / (time.perf_counter() - t0), headers


def in_process(m, body: bytes, n: int, tile: int, png_level: int | None = None) -> tuple[list[float], float]:
    """n sequential decode + enhance + encode of `body` -> (latencies s, images/s)."""
    from translator import codec
    from translator.images import PNG_COMPRESS_LEVEL

    lat = []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        decoded = codec.decode(body, 16_000_000)
        codec.encode(m.enhance(decoded.tensor, tile=tile, overlap=32), decoded,
                     png_compress_level=PNG_COMPRESS_LEVEL if png_level is None else png_level)
        lat.append(time.perf_counter() - t0)
    return lat, n / (time.perf_counter() - t_all)


def _png_level(label: str) -> int | None:
    return TODAY_PNG_LEVEL if label.endswith("(today)") else None


def _row(size, path, runtime, batching, c, lat, rate, base):
    p50 = percentile(lat, 50)
    row = [f"{size}x{size}", path, runtime, batching, min(c, len(lat) or c), p50 * 1e3, percentile(lat, 95) * 1e3, rate,
           p50 / base if base else float("nan")]
    print("  ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row), flush=True)  # progress
    return row


def interleaved(settings, model: str, size: int, rounds: int) -> None:
    """In-process runtimes round-robin on one input size: p50 / min per runtime and ratios."""
    import torch

    from registry.loading import load
    from registry.refs import resolve
    from translator.runtime import cpu_has_native_bf16

    name, version = resolve(settings.mlflow_uri, model)
    body = _image(size)
    configs = {"torch NCHW fp32 (today)": dict(runtime="torch", memory_format="contiguous", precision="fp32"),
               "torch channels_last fp32": dict(runtime="torch", memory_format="channels_last", precision="fp32")}
    if cpu_has_native_bf16():
        configs["torch channels_last bf16"] = dict(runtime="torch", memory_format="channels_last", precision="bf16")
    configs["onnx (ONNX Runtime CPU)"] = dict(runtime="onnx")
    rows = []
    for threads in (1, CPUS):
        models = {k: load(settings.mlflow_uri, name, version, threads=threads, **kw) for k, kw in configs.items()}
        lat: dict[str, list[float]] = {k: [] for k in configs}
        for m in models.values():
            m.enhance(torch.zeros(1, 3, 64, 64))  # warm-up
        for r in range(rounds):
            for label, m in models.items():
                torch.set_num_threads(threads)  # each load set it; all runs here use `threads`
                lat[label] += in_process(m, body, 1, tile=512, png_level=_png_level(label))[0]
            print(f"threads {threads}: round {r + 1}/{rounds}", flush=True)
        base = percentile(lat["torch NCHW fp32 (today)"], 50)
        for label, values in lat.items():
            p50 = percentile(values, 50)
            rows.append([f"{size}x{size}", label, threads, p50 * 1e3, min(values) * 1e3, p50 / base,
                         base / p50])
    report(f"serve_latency_interleaved_{size}", f"In-process runtimes round-robin ({model}, {size}x{size}, "
           f"{rounds} rounds, PNG codec included)",
           ["input", "runtime", "threads", "p50 ms", "min ms", "p50 / NCHW fp32 p50", "speed-up"], rows,
           notes="Each round runs every runtime once, one after the other, so load from other jobs on this "
                 "shared machine hits all of them alike; absolute times are noisy, the ratios are the result.")


def _post_one(client, url: str, body: bytes) -> tuple[float, float]:
    """One POST -> (latency s, seconds inside the replica from Server-Timing)."""
    t0 = time.perf_counter()
    r = client.post(url + "/enhance", content=body, headers={"Content-Type": "image/png"})
    r.raise_for_status()
    return time.perf_counter() - t0, replica_seconds(r.headers.get("server-timing", ""))


def quick(settings, model: str, n: int = 20) -> None:
    """The 256x256, concurrency-1 latency target alone (a few minutes). Each Serve configuration
    (the baseline's, torch channels_last auto, ONNX Runtime, the default runtime; 2 CPUs) is measured
    in `n` rounds of one request each, interleaved with one run of the baseline in-process path, so load
    from other jobs on a shared machine hits both sides of each ratio alike. Then the in-process
    torch bf16 path (what the fastest replica runs, without Serve)."""
    import httpx

    from registry.loading import load
    from registry.refs import resolve
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling
    from translator.runtime import cpu_has_native_bf16

    name, version = resolve(settings.mlflow_uri, model)
    body = _image(256)
    today = load(settings.mlflow_uri, name, version, threads=CPUS, runtime="torch", memory_format="contiguous",
                 precision="fp32")
    in_process(today, body, 3, tile=512, png_level=TODAY_PNG_LEVEL)  # warm-up
    # (label, replica options, CPUs per replica, retain freed memory)
    configs = [("torch NCHW fp32, 1 CPU (today)", ReplicaOptions(runtime="torch", memory_format="contiguous",
                                                                 precision="fp32", tile=256, max_batch_size=8), 1, False),
               ("torch channels_last auto", ReplicaOptions(runtime="torch", memory_format="channels_last",
                                                           precision="auto", tile=512, max_batch_size=1), CPUS, True),
               ("onnx", ReplicaOptions(runtime="onnx", tile=512, max_batch_size=1), CPUS, True),
               ("auto (the default runtime)", ReplicaOptions(runtime="auto", tile=512, max_batch_size=1), CPUS, True)]
    from cluster.stack import Stack

    rows, all_today = [], []
    notes = [f"Ray head: {next(st.detail for st in Stack(settings).status() if st.name == 'ray')}"]
    with httpx.Client(timeout=300) as client:
        for label, options, cpus, retain in configs:
            deploy(settings, model, options, Scaling(min_replicas=1, max_replicas=1, num_cpus=cpus), wait_s=600,
                   retain_freed_memory=retain)
            info = httpx.get(settings.serve_url + "/model", timeout=30).json()
            for _ in range(3):  # warm-up
                _post_one(client, settings.serve_url, body)
            lat, replica, base_lat = [], [], []
            t_serve = 0.0
            for _ in range(n):
                base_lat += in_process(today, body, 1, tile=512, png_level=TODAY_PNG_LEVEL)[0]
                seconds, inside = _post_one(client, settings.serve_url, body)
                lat.append(seconds)
                replica.append(inside)
                t_serve += seconds
            all_today += base_lat
            base = percentile(base_lat, 50)
            runtime = f"{info.get('runtime')} {info.get('precision')}"
            small = info.get("small_images") or {}
            if small:  # the default runtime hands small images to another runtime; say which
                runtime = f"{small.get('runtime')} {small.get('precision')} at 256x256"
            desc = f"{label} [{runtime}, {info.get('threads')} thr]"
            if info.get("runtime_choice"):
                notes.append(f"{label}: the replica's runtime_choice {info['runtime_choice']}")
                print(notes[-1], flush=True)
            rows.append(_row(256, "Serve", desc, "on" if options.max_batch_size > 1 else "off", 1, lat, n / t_serve,
                             base) + [base * 1e3, percentile(replica, 50) * 1e3])
    deploy(settings, model)  # back to the defaults
    base = percentile(all_today, 50)
    rows.insert(0, _row(256, "in-process", "torch NCHW fp32 (today)", "-", 1, all_today,
                        len(all_today) / sum(all_today), base) + [base * 1e3, "-"])
    del today
    retain_freed_memory()  # as the platform's paths do; the baseline runs above were without it
    if cpu_has_native_bf16():  # what the best Serve row runs inside its replica, without Serve
        m = load(settings.mlflow_uri, name, version, threads=CPUS, runtime="torch", memory_format="channels_last",
                 precision="bf16")
        in_process(m, body, 3, tile=512)
        lat, rate = in_process(m, body, n, tile=512)
        rows.insert(1, _row(256, "in-process", "torch channels_last bf16 (measured last, alone)", "-", 1, lat, rate,
                            base) + [base * 1e3, "-"])
    report("serve_latency_quick", f"Serving latency at 256x256, concurrency 1 ({model}, {n} rounds each)",
           ["input", "path", "runtime", "batching", "concurrency", "p50 ms", "p95 ms", "images/s",
            "p50 / today's in-process p50 (same rounds)", "today's in-process p50 ms (same rounds)",
            "in-replica p50 ms (Server-Timing)"], rows,
           notes="The target: Serve p50 <= 0.6 x today's in-process p50. Each Serve row alternates "
                 "one request with one run of today's in-process path (PyTorch NCHW fp32, PNG level 6, "
                 "glibc malloc defaults) and divides by that path's p50 over the same rounds; the in-process "
                 "today row pools all rounds. In-replica time is decode + model + encode as the replica's "
                 "Server-Timing header reports it; the rest of a Serve p50 is HTTP and Ray Serve's ingress "
                 "(HAProxy or its Python proxy, as the note below says).\n" + "\n".join(f"- {n}" for n in notes))


def main() -> None:
    import httpx
    import torch

    from registry.loading import load
    from registry.refs import resolve
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling
    from translator.runtime import cpu_has_native_bf16

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo-photos-nafnet@champion")
    parser.add_argument("--interleaved", action="store_true", help="in-process runtimes round-robin only")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="256x256 at concurrency 1 only, 20 rounds each: Serve today, torch channels_last "
                             "auto, onnx and the default runtime (2 CPUs), each interleaved with today's "
                             "in-process path")
    args = parser.parse_args()
    settings = settings_with_stack()
    if args.interleaved:
        return interleaved(settings, args.model, args.size, args.rounds)
    if args.quick:
        return quick(settings, args.model)
    name, version = resolve(settings.mlflow_uri, args.model)
    bodies = {s: _image(s) for s in SIZES}
    rows, notes = [], []
    base: dict[int, float] = {}  # the baseline's in-process p50 per size

    # ---- in-process -------------------------------------------------------------------------
    configs = [("torch NCHW fp32 (today)", dict(runtime="torch", memory_format="contiguous", precision="fp32")),
               ("torch channels_last fp32", dict(runtime="torch", memory_format="channels_last", precision="fp32"))]
    if cpu_has_native_bf16():
        configs.append(("torch channels_last bf16", dict(runtime="torch", memory_format="channels_last",
                                                         precision="bf16")))
    configs += [("torch channels_last auto", dict(runtime="torch", memory_format="channels_last", precision="auto")),
                ("onnx (ONNX Runtime CPU)", dict(runtime="onnx"))]
    for label, kw in configs:
        m = load(settings.mlflow_uri, name, version, threads=CPUS, **kw)
        if kw.get("precision") == "auto":
            notes.append(f"precision auto chose {m.runtime.precision}: {m.runtime.check}")
        m.enhance(torch.zeros(1, 3, 256, 256), tile=256)  # warm-up
        for size in SIZES:
            lat, rate = in_process(m, bodies[size], REQUESTS[(size, 1)], tile=512, png_level=_png_level(label))
            if label.endswith("(today)"):
                base[size] = percentile(lat, 50)
            rows.append(_row(size, "in-process", label, "-", 1, lat, rate, base.get(size)))
        retain_freed_memory()  # process-wide and sticky: after the baseline's rows, for every later one
    # Tile size at 1024x1024 for the auto torch runtime (the default candidate).
    m = load(settings.mlflow_uri, name, version, threads=CPUS, runtime="torch")
    tile_p50 = {}
    for tile in TILES:
        lat, rate = in_process(m, bodies[1024], 1, tile)
        tile_p50[tile] = percentile(lat, 50)
        rows.append(_row(1024, f"in-process, tile {tile}", f"torch channels_last {m.runtime.precision}", "-", 1, lat,
                         rate, base[1024]))
    best_tile = min(tile_p50, key=tile_p50.get) if tile_p50 else 512
    notes.append(f"fastest tile at 1024x1024: {best_tile} ({', '.join(f'{t}: {v * 1e3:.0f} ms' for t, v in tile_p50.items())})")
    del m

    # ---- what threads does a replica get from Ray by itself? ---------------------------------
    deploy(settings, args.model, scaling=Scaling(min_replicas=1, max_replicas=1, num_cpus=0.5), wait_s=600)
    info = httpx.get(settings.serve_url + "/model", timeout=30).json()
    notes.append(f"a replica with num_cpus=0.5 starts with torch.get_num_threads() = {info.get('initial_torch_threads')} "
                 f"(reserved CPUs {info.get('reserved_cpus')}); the new code sets {info.get('threads')} thread(s)")

    # ---- Serve --------------------------------------------------------------------------------
    serve_configs = [
        ("torch NCHW fp32, 1 CPU (today)", dict(runtime="torch", memory_format="contiguous", precision="fp32",
                                               num_cpus=1, tile=256, retain_freed_memory=False), ("on",)),
        ("torch NCHW fp32", dict(runtime="torch", memory_format="contiguous", precision="fp32", num_cpus=CPUS,
                                 tile=best_tile), ("off",)),
        ("torch channels_last auto", dict(runtime="torch", memory_format="channels_last", precision="auto",
                                          num_cpus=CPUS, tile=best_tile), ("off", "on")),
        ("onnx", dict(runtime="onnx", num_cpus=CPUS, tile=best_tile), ("off", "on")),
    ]
    serve_today: dict = {}
    for label, kw, batchings in serve_configs:
        for batching in batchings:
            try:  # a failed configuration (e.g. a replica killed by a memory-starved machine) is noted, not fatal
                options = {**kw, "max_batch_size": 8 if batching == "on" else 1}
                cpus, retain = options.pop("num_cpus"), options.pop("retain_freed_memory", True)
                deploy(settings, args.model, ReplicaOptions(**options),
                       Scaling(min_replicas=1, max_replicas=1, num_cpus=cpus), wait_s=600, retain_freed_memory=retain)
                info = httpx.get(settings.serve_url + "/model", timeout=30).json()
                desc = f"{label} [{info.get('runtime')} {info.get('memory_format')} {info.get('precision')}, " \
                       f"{info.get('threads')} thr, tile {kw['tile']}]"
                for size in SIZES:
                    asyncio.run(_load(settings.serve_url, bodies[size], 1, 1))  # warm-up
                    for c in LEVELS:
                        lat, rate, _ = asyncio.run(_load(settings.serve_url, bodies[size], REQUESTS[(size, c)], c))
                        rows.append(_row(size, "Serve", desc, batching, c, lat, rate, base[size]))
                        if label.endswith("(today)"):
                            serve_today[(size, c)] = rate
            except Exception as e:
                notes.append(f"{label}, batching {batching}: FAILED ({type(e).__name__}: {str(e)[:150]})")
                print(notes[-1], flush=True)

    serve_rows = [r for r in rows if r[1] == "Serve" and "(today)" not in r[2]]
    best256 = min((r for r in serve_rows if r[0] == "256x256" and r[4] == 1), key=lambda r: r[5])
    best1024 = max((r for r in serve_rows if r[0] == "1024x1024" and r[4] > 1), key=lambda r: r[7])
    serve_today.setdefault((1024, 16), float("nan"))
    notes.append(f"target 1: best Serve p50 at 256x256, c=1: {best256[5]:.0f} ms = {best256[8]:.2f} x today's "
                 f"in-process p50 ({base[256] * 1e3:.0f} ms) [target <= 0.6] ({best256[2]}, batching {best256[3]})")
    notes.append(f"target 2: best Serve images/s at 1024x1024, c=16: {best1024[7]:.3f} = "
                 f"{best1024[7] / serve_today[(1024, 16)]:.2f} x today's Serve ({serve_today[(1024, 16)]:.3f}) "
                 f"[target >= 2] ({best1024[2]}, batching {best1024[3]})")
    report("serve_latency", f"Serving latency, runtimes side by side ({args.model}, 1 replica, PNG codec included)",
           ["input", "path", "runtime", "batching", "concurrency", "p50 ms", "p95 ms", "images/s",
            "p50 / today's in-process p50"],
           rows, notes="Measured in one run on a machine shared with other jobs: absolute times are noisy, compare "
                       "rows of this table with each other. At concurrency > 1 the p50 includes queueing on one "
                       "replica; the concurrency column is the number actually in flight.\n\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
