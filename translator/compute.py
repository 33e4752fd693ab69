"""A replica's model computation: the one compute thread every model call runs on, tiles grouped
into forward passes (batched across requests or one request alone), and a model loaded and
timed on that thread. No HTTP here: serving/app.py awaits these, and the batch job
(jobs/batch/) calls `enhance_alone`, so both give the same bytes for the same model and file."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from translator import codec, tiling

if TYPE_CHECKING:  # duck-typed: anything with `net(direction, pixels)` and `multiple` (registry.loading.LoadedModel)
    from registry.loading import LoadedModel

# Tiles per forward pass of one request: all tiles at once would hold every tile's activations
# (GBs on CPU); on a CPU one at a time is also fastest (1024x1024 in 512 px tiles: 1.17 s one by
# one vs 2.28 s four at a time, torch bf16, 2 threads: benchmarks/RESULTS.md). GPUs keep 4.
CPU_TILES_PER_PASS, GPU_TILES_PER_PASS = 1, 4

# Every model computation of a replica runs on one thread (`compute_thread`): libgomp keeps an
# OpenMP team per calling thread, and once teams outnumber the CPUs it stops spinning between
# regions; on asyncio's rotating pool a 256x256 NAFNet pass was ~50% slower (35 vs 50-70 ms on
# 2 cores; benchmarks/RESULTS.md). One thread keeps one team, as in a plain script.
# Created on first use: Ray pickles the app, and an executor does not pickle.
_compute: concurrent.futures.ThreadPoolExecutor | None = None
T = TypeVar("T")


def compute_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one-thread executor every model computation of this process runs on."""
    global _compute
    if _compute is None:
        _compute = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="img2img-compute")
    return _compute


async def on_compute_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on the compute thread, awaited; its exceptions propagate."""
    return await asyncio.get_running_loop().run_in_executor(compute_thread(), functools.partial(fn, *args, **kwargs))


def tiles_per_pass(device: str) -> int:
    """How many tiles of one request go through the model together on `device` ("cpu", "cuda")."""
    return CPU_TILES_PER_PASS if device == "cpu" else GPU_TILES_PER_PASS


def group_tiles(items: list[tuple[Any, Any, torch.Tensor, bool]]) -> dict[tuple, list[int]]:
    """Which of a batch's items can run as one forward pass: (id(runtime), tile shape, precise)
    -> item indices in arrival order. `precise` tiles (of 16-bit images) always run fp32, so they
    never share a pass with the others; every index lands in exactly one group."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, net, tile, precise) in enumerate(items):
        groups.setdefault((id(net), tuple(tile.shape), precise), []).append(i)
    return groups


def run_grouped(items: list[tuple[Any, Any, torch.Tensor, bool]], per_pass: int | None = None,
                deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> list[torch.Tensor]:
    """Run a batch of (model, runtime, tile (1, C, H, W), precise) items, one `runtime.run` per
    group of `group_tiles` (at most `per_pass` tiles each, when given) -> each item's own output
    (1, C, H', W'), in the items' order. Before each pass: raises TimeoutError once `deadline`
    (time.monotonic() seconds) has passed (a request already answered 504 stops computing), and
    `tiling.Cancelled` once `cancelled()` is True (its client went away)."""
    out: list[torch.Tensor | None] = [None] * len(items)
    with torch.inference_mode():
        for (_, _, precise), idx in group_tiles(items).items():
            net = items[idx[0]][1]
            step = per_pass or len(idx)
            for k in range(0, len(idx), step):
                tiling.stop_if(cancelled)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("request time limit passed")
                part = idx[k:k + step]
                result = net.run(torch.cat([items[i][2] for i in part]), precise)
                for j, i in enumerate(part):
                    out[i] = result[j:j + 1]
    return out


def split_for(model: LoadedModel, direction: str, decoded: codec.DecodedImage, tile: int, overlap: int):
    """-> (the runtime for this direction and image size, tiles (N, 3, t, t) of the decoded image
    in [-1, 1], the plan `tiling.merge` needs): what both request paths do before the model."""
    image = decoded.tensor
    net = model.net(direction, image.shape[-2] * image.shape[-1])
    return (net, *tiling.split(image, tile, overlap, model.multiple, model.descriptor.scale))


def enhance_alone(body: bytes, max_pixels: int, model: LoadedModel, direction: str, fmt: str, tile: int,
                  overlap: int, deadline: float | None = None, cancelled: Callable[[], bool] | None = None,
                  raise_with: str = codec.DEPLOY_COMMAND) -> tuple[bytes, str, codec.DecodedImage, dict[str, float], Any]:
    """One request end to end in the calling thread (batching off): decode, tiles through the
    model's runtime for this direction and image size (`tiles_per_pass` at a time), merge, encode
    -> (data, media type, decoded input, seconds per stage, the runtime). Raises
    `codec.RequestError` for bad input, as the batched path does; between passes, TimeoutError
    once `deadline` (time.monotonic()) has passed and `tiling.Cancelled` once `cancelled()`.
    `raise_with`: the command an over-limit refusal names (`codec.decode`)."""
    tiling.stop_if(cancelled)  # its client left while it waited for the compute thread
    t0 = time.perf_counter()
    decoded = codec.decode(body, max_pixels, raise_with, model.descriptor.scale)
    codec.check_output(fmt, decoded)
    t1 = time.perf_counter()
    net, tiles, plan = split_for(model, direction, decoded, tile, overlap)
    outs = run_grouped([(model, net, tiles[i:i + 1], decoded.high_bit) for i in range(len(tiles))],
                       per_pass=tiles_per_pass(net.device), deadline=deadline, cancelled=cancelled)
    merged = tiling.merge(torch.cat(outs), plan)
    t2 = time.perf_counter()
    data, media = codec.encode(merged, decoded, fmt)
    return data, media, decoded, {"decode": t1 - t0, "model": t2 - t1, "encode": time.perf_counter() - t2}, net
