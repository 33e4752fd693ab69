"""Tiled inference: run a fully-convolutional generator on images of any size (1x1 to 8K).

The image is padded to the network's multiple, cut into overlapping tiles, the tiles are run
in batches, and overlaps are blended with a window that ramps linearly across the overlap, so
seams vanish; the result is cropped back to exactly the input size times the generator's `scale`
(output size / input size, `translator.descriptor.GeneratorDescriptor.scale`): tiles are cut in
input pixels and blended in output pixels, where every position, tile and overlap is `scale`
times larger (scale 1: the same numbers). `split` and `merge` are
exposed separately so a server can batch tiles from many requests together. A caller that may
stop wanting the result (a server whose client went away) passes a `cancelled` check: it is
asked before every pass, and `Cancelled` ends the work there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from translator import OVERLAP, TILE


class Cancelled(Exception):
    """Tiled inference stopped between passes because the caller's `cancelled()` said so."""


def stop_if(cancelled: Callable[[], bool] | None) -> None:
    """Raise `Cancelled` when `cancelled` is given and returns True (checked between tile passes)."""
    if cancelled is not None and cancelled():
        raise Cancelled("stopped between tile passes: the caller no longer wants the result")


@dataclass
class TilePlan:
    height: int  # original size
    width: int
    padded_h: int
    padded_w: int
    tile_h: int
    tile_w: int
    positions: list[tuple[int, int]]  # (top, left) of each tile in the padded image
    overlap: int
    scale: int = 1  # output pixels per input pixel along each side


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    if not ph and not pw:
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def split(image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP, multiple: int = 1, scale: int = 1):
    """1xCxHxW -> (N x C x th x tw tiles, plan), in input pixels; `scale` (a whole number >= 1) is
    what the network will multiply each side by, so `merge` expects N x C' x th*scale x tw*scale."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError("split expects one image as a 1xCxHxW tensor")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a whole number >= 1, got {scale!r}")
    h, w = image.shape[-2:]
    tile = max(multiple, tile // multiple * multiple)
    overlap = min(overlap, tile // 2)
    ph = (-h) % multiple
    pw = (-w) % multiple
    padded = _pad(image, ph, pw)
    H, W = h + ph, w + pw
    th, tw = min(tile, H), min(tile, W)
    stride_h, stride_w = max(1, th - overlap), max(1, tw - overlap)
    positions = [(t, l) for t in _starts(H, th, stride_h) for l in _starts(W, tw, stride_w)]
    tiles = torch.cat([padded[..., t:t + th, l:l + tw] for t, l in positions], 0)
    return tiles, TilePlan(h, w, H, W, th, tw, positions, overlap, scale)


def _ramp(n: int, overlap: int, ramp_start: bool, ramp_end: bool, device) -> torch.Tensor:
    """Blend weights along one tile axis. Where the edge touches a neighbour tile, the first
    quarter of the overlap is ~0 (a conv's zero padding spoils a tile's outermost pixels) and
    the rest rises linearly to 1; an edge on the image border keeps weight 1."""
    w = torch.ones(n, device=device)
    if overlap <= 0 or n <= 2 * overlap:
        return w
    margin = overlap // 4
    i = torch.arange(overlap, device=device, dtype=torch.float32)
    edge = ((i - margin + 1) / (overlap - 2 * margin + 1)).clamp(1e-6, 1.0)
    if ramp_start:
        w[:overlap] = edge
    if ramp_end:
        w[-overlap:] = edge.flip(0)
    return w


def merge(tiles: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Blend processed tiles (N x C x tile_h*scale x tile_w*scale) back into one 1 x C x
    height*scale x width*scale image. Raises ValueError when the tiles are not that size."""
    c, dev, s = tiles.shape[1], tiles.device, plan.scale
    th, tw, ov = plan.tile_h * s, plan.tile_w * s, plan.overlap * s
    if tuple(tiles.shape[-2:]) != (th, tw):
        raise ValueError(f"tiles are {tiles.shape[-2]}x{tiles.shape[-1]} px; a network of scale {s} on "
                         f"{plan.tile_h}x{plan.tile_w} tiles gives {th}x{tw}")
    ph, pw = plan.padded_h * s, plan.padded_w * s
    out = torch.zeros(1, c, ph, pw, device=dev, dtype=torch.float32)
    weight = torch.zeros(1, 1, ph, pw, device=dev, dtype=torch.float32)
    for tile, (t, l) in zip(tiles.float(), plan.positions):
        t, l = t * s, l * s
        wy = _ramp(th, ov, t > 0, t + th < ph, dev)
        wx = _ramp(tw, ov, l > 0, l + tw < pw, dev)
        window = torch.outer(wy, wx)
        out[0, :, t:t + th, l:l + tw] += tile * window
        weight[0, 0, t:t + th, l:l + tw] += window
    return out.div_(weight)[..., : plan.height * s, : plan.width * s]  # in place: one image-sized buffer less


@torch.inference_mode()
def enhance(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int = TILE,
            overlap: int = OVERLAP, multiple: int = 1, batch_size: int = 4,
            cancelled: Callable[[], bool] | None = None, scale: int = 1) -> torch.Tensor:
    """Run `forward` (NCHW -> NCHW, e.g. a generator whose output is `scale` times its input's
    height and width) over `image` (1xCxHxW) of any size, `batch_size` tiles per pass ->
    1 x C' x H*scale x W*scale. Raises `Cancelled` before a pass once `cancelled()` is True."""
    tiles, plan = split(image, tile, overlap, multiple, scale)
    outputs = []
    for i in range(0, len(tiles), batch_size):
        stop_if(cancelled)
        outputs.append(forward(tiles[i:i + batch_size]).float())
    return merge(torch.cat(outputs, 0), plan)


def count_tiles(height: int, width: int, tile: int = TILE, overlap: int = OVERLAP, multiple: int = 1) -> int:
    tile = max(multiple, tile // multiple * multiple)
    H, W = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    th, tw = min(tile, H), min(tile, W)
    ov = min(overlap, tile // 2)
    return len(_starts(H, th, max(1, th - ov))) * len(_starts(W, tw, max(1, tw - ov)))
