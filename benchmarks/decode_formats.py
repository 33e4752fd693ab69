"""The data pipeline alone: training pairs/s per CPU core, decoded and cropped as a training job
gets them, for the ways a Parquet shard could hold a pair, and what each costs in bytes.

Each pair is a scikit-image sample photo (the training photos), resized so its shorter side is
the stored size, centre-cut square, with a Gaussian-blurred input beside it. Per row: one format
at one stored size and one training crop; one thread (PIL decodes on one core; torch is set to
1 thread), the same pairs over and over for at least SECONDS s.

- `png` (what ingest stores, compress level 6) through the job's own `DecodeBatch` (crop, flip, stack);
- `png`, the bare path: the same bytes decoded, cropped in uint8, converted to float;
- `png level 1`: faster to write, larger;
- `webp lossless` (PIL, method 0: fastest encode);
- `raw uint8`: the pixels as bytes (no decode, a reshape);
- `pre-cropped png`: ingest's `--crops N --size CROP` stores crops already at the training size.

Then the arithmetic: how many cores keep one GPU fed at the rates an H100 trains (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report  # noqa: E402

SECONDS = 3.0
BATCH = 8
# Samples/s an H100 trains at 256 px (one GPU; measured on the lent machine, docs/benchmarks.md).
GPU_RATES = {"nafnet-tiny": 485, "pix2pix": 800}


def photos(size: int) -> list[np.ndarray]:
    """The sample photos as size x size RGB uint8 (shorter side resized to `size`, centre-cut)."""
    from jobs.data.sources import list_sample

    out = []
    for f in list_sample():
        img = Image.open(f.location).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(np.asarray(img.crop((left, top, left + size, top + size))))
    return out


def encode(arr: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return arr.tobytes()
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "png1":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        img.save(buf, "WEBP", lossless=True, method=0)
    return buf.getvalue()


def pairs(size: int, fmt: str) -> list[tuple[bytes, bytes]]:
    out = []
    for arr in photos(size):
        blurred = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1.5)))
        out.append((encode(blurred, fmt), encode(arr, fmt)))
    return out


def crop_float(arr: np.ndarray, crop: int, rng) -> np.ndarray:
    """uint8 HxWx3 -> a random crop, float32 CHW in [-1, 1] (converted after cropping)."""
    h, w = arr.shape[:2]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return arr[top:top + crop, left:left + crop].transpose(2, 0, 1).astype(np.float32) * (2 / 255) - 1


def rate(fn, n_pairs: int) -> float:
    """Pairs/s of `fn()` (which handles `n_pairs` pairs) over at least SECONDS s."""
    fn()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < SECONDS:
        fn()
        done += n_pairs
    return done / (time.perf_counter() - t0)


def measure(stored: int, crop: int) -> list[list]:
    from jobs.data.decode import DecodeBatch

    rng = np.random.default_rng(0)
    rows = []
    png = pairs(stored, "png")
    batch = {"key": np.array([str(i) for i in range(len(png))]), "input": np.array([p[0] for p in png], dtype=object),
             "target": np.array([p[1] for p in png], dtype=object)}
    job = DecodeBatch(["input", "target"], crop, augment=True)
    rows.append(["png (ingest's)", stored, crop, "DecodeBatch (the job's: crop in uint8, flip, float)",
                 rate(lambda: job(batch), len(png)), sum(len(a) + len(b) for a, b in png) / len(png) / 1e3])

    def decoded(data, decode):
        return lambda: [crop_float(decode(x), crop, rng) for pair in data for x in pair]

    pil = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
    for fmt, label, decode in (("png", "png", pil), ("png1", "png level 1", pil), ("webp", "webp lossless", pil),
                               ("raw", "raw uint8", lambda b: np.frombuffer(b, np.uint8).reshape(stored, stored, 3))):
        data = png if fmt == "png" else pairs(stored, fmt)
        rows.append([label, stored, crop, "crop in uint8, then float", rate(decoded(data, decode), len(data)),
                     sum(len(a) + len(b) for a, b in data) / len(data) / 1e3])
    if stored > crop:
        data = pairs(crop, "png")
        rows.append(["pre-cropped png", crop, crop, "crop in uint8, then float", rate(decoded(data, pil), len(data)),
                     sum(len(a) + len(b) for a, b in data) / len(data) / 1e3])
    return rows


def main() -> None:
    import torch

    torch.set_num_threads(1)
    rows = []
    for stored, crop in ((512, 256), (256, 256), (256, 64)):
        rows += measure(stored, crop)
    report("decode_formats", "Data pipeline alone: training pairs/s per CPU core",
           ["stored as", "stored px", "crop px", "decode path", "pairs/s per core", "KB per pair"], rows,
           notes=f"{len(photos(64))} sample photos, blurred input + clean target; one thread; decode, random crop and "
                 "float32 CHW conversion, no flips. Cores to feed one GPU = its samples/s / pairs/s per core "
                 f"(H100 at 256 px: {', '.join(f'{k} {v}/s' for k, v in GPU_RATES.items())}).")


if __name__ == "__main__":
    main()
