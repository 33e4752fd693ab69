"""Sample formats: the numeric type of an image's samples (uint8, uint16, int32, float32...), how
each is normalised to [0, 1] for a network and restored afterwards, and the readers and writers
Pillow lacks (TIFFs with float, signed or 32-bit samples; 16-bit grey+alpha PNG).

Kept: unsigned and signed integers up to 32 bits and floats of 16, 32 and 64 bits, with 1 (grey),
2 (grey+alpha), 3 (RGB) or 4 (RGBA) samples a pixel. Refused (`UnsupportedImage`, naming the
format): 64-bit integers, complex samples, NaN or infinite floats, and TIFF colour models other
than grey and RGB at more than 8 bits (16-bit CMYK, CIELab, palette...).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
CHANNELS = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
ADVICE = "convert it to 16-bit PNG or TIFF (or 8-bit)"


class UnsupportedImage(ValueError):
    """A readable image whose sample format is not kept; the message names it and what to send."""


def describe(dtype: np.dtype, channels: int, container: str = "TIFF", colour: str | None = None) -> str:
    """-> e.g. '32-bit float RGB TIFF', '16-bit signed integer grey TIFF' (for messages)."""
    dtype = np.dtype(dtype)
    kind = {"f": "float", "i": "signed integer", "u": "integer", "b": "1-bit", "c": "complex"}.get(dtype.kind, "")
    bits = "" if dtype.kind == "b" else f"{dtype.itemsize * 8}-bit "
    colour = colour or CHANNELS.get(channels, f"{channels}-channel")
    return f"{bits}{kind} {colour} {container}".replace("  ", " ")


def check_dtype(dtype: np.dtype, what: str) -> None:
    """Raises UnsupportedImage unless `dtype` is a kept sample type (see the module docstring)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and dtype.itemsize <= 4 or dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return
    raise UnsupportedImage(f"{what} is not supported; {ADVICE}")


def _covering(span: float, bits: int) -> int:
    """The smallest 2**k - 1 (8 <= k <= bits) holding `span`: 12-bit data in a 16-bit file keeps
    its levels on the full [0, 1] instead of being crushed into its lowest 16th."""
    return 2 ** max(8, min(bits, int(span).bit_length())) - 1


def value_range(arr: np.ndarray, what: str = "image") -> tuple[float, float]:
    """-> (offset, scale) so that (arr - offset) / scale lies in [0, 1] without clipping.

    Unsigned integers: offset 0, scale the smallest 2**k - 1 covering the largest value (k >= 8).
    Signed integers: offset min(0, smallest value), scale 2**k - 1 covering the span.
    Floats: offset min(0, smallest value), scale max(1, largest value) - offset, so an image in
    [0, 1] passes unchanged and an HDR one (e.g. 0-4) is divided by its own peak.
    Raises UnsupportedImage for NaN or infinite float samples (`what` names the image)."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise UnsupportedImage(f"{what} has NaN or infinite samples, which cannot be processed; "
                                   "replace them with finite values")
        lo = min(0.0, float(arr.min())) if arr.size else 0.0
        hi = max(1.0, float(arr.max())) if arr.size else 1.0
        return lo, hi - lo
    bits = arr.dtype.itemsize * 8
    lo = min(0, int(arr.min())) if arr.size else 0
    top = int(arr.max()) - lo if arr.size else 0
    return float(lo), float(_covering(top, bits))


def normalise(arr: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """Samples of any kept dtype -> float32 in [0, 1] (see `value_range`)."""
    return ((arr.astype(np.float64) - offset) / scale).astype(np.float32)


def restore(pixels: np.ndarray, dtype: str, offset: float, scale: float) -> np.ndarray:
    """float pixels in [0, 1] -> samples of `dtype` in the source's own range (integers rounded to
    the nearest level and held inside what the type can store)."""
    values = pixels.astype(np.float64) * scale + offset
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    return values.astype(dt)


# ---- TIFF through tifffile: the sample formats Pillow reads as 8-bit, or not at all ------------
def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_MAGIC


def tiff_size(data: bytes) -> tuple[int, int]:
    """-> (width, height) of the first page, from its tags only (nothing decoded)."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = _first_page(tf)
        return int(page.imagewidth), int(page.imagelength)


def _first_page(tf):
    if not len(tf.pages):
        raise ValueError("the TIFF holds no image")
    return tf.pages.first


def read_tiff(data: bytes) -> tuple[np.ndarray, int, bytes | None, int]:
    """TIFF bytes -> (samples HxW or HxWxC (C 2-4) in the file's dtype, EXIF orientation tag
    value, ICC profile or None, page count). Grey (min-is-black) and RGB pages with up to one
    extra (alpha) sample are read; compressions tifffile cannot decode alone (LZW, JPEG... need
    imagecodecs) are decoded by OpenCV's libtiff instead.
    Raises UnsupportedImage (naming the sample format) for anything else, ValueError for a broken
    or truncated file."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = _first_page(tf)
        n, dtype = int(page.samplesperpixel), np.dtype(page.dtype)
        photometric = int(page.photometric)  # 1 min-is-black, 2 RGB
        colour = None if photometric in (1, 2) else f"{page.photometric.name.lower()}"
        what = describe(dtype, n, colour=colour)
        check_dtype(dtype, what)
        if photometric == 1 and n > 2 or photometric == 2 and not 3 <= n <= 4 or photometric not in (1, 2):
            raise UnsupportedImage(f"{what} is not supported; {ADVICE}")
        tags = page.tags
        orientation = int(tags["Orientation"].value) if "Orientation" in tags else 1
        icc = bytes(tags["InterColorProfile"].value) if "InterColorProfile" in tags else None
        frames = len(tf.pages)
        try:
            arr = page.asarray()
            if page.axes.startswith("S"):  # planar configuration: one plane a sample
                arr = np.moveaxis(arr, 0, -1)
        except Exception as e:  # a compression tifffile needs imagecodecs for, or broken data
            arr = _read_tiff_opencv(data, n, what, e)
    return np.ascontiguousarray(arr), orientation, icc, frames


def _read_tiff_opencv(data: bytes, samples: int, what: str, why: Exception) -> np.ndarray:
    """Raises ValueError (broken or truncated data, `why` from tifffile) when OpenCV fails too."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or (1 if arr.ndim == 2 else arr.shape[2]) != samples:
        raise ValueError(f"{what} could not be decoded ({why})")
    if samples == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA) if samples == 4 else arr


def write_tiff(samples: np.ndarray, alpha: np.ndarray | None, icc: bytes | None) -> bytes:
    """HxW or HxWx3 samples of any kept dtype (+ HxW alpha, cast to that dtype) -> zlib TIFF."""
    import tifffile

    arr = samples if alpha is None else np.dstack([samples, alpha.astype(samples.dtype)])
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack" if samples.ndim == 2 else "rgb",
                     extrasamples=None if alpha is None else ("unassalpha",), iccprofile=icc,
                     compression="zlib", planarconfig="contig")
    return buf.getvalue()


# ---- PNG colour type and the 16-bit grey+alpha PNG neither Pillow nor OpenCV writes ------------
def png_colour_type(data: bytes) -> int | None:
    """IHDR colour type (byte 25): 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA; None if short."""
    return data[25] if len(data) > 25 else None


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_png16_grey_alpha(grey: np.ndarray, alpha: np.ndarray, level: int = 6) -> bytes:
    """HxW uint16 grey + HxW uint16 alpha -> a PNG of colour type 4 at bit depth 16 (PNG spec,
    ISO/IEC 15948: big-endian samples, each row led by filter byte 0)."""
    h, w = grey.shape
    rows = np.empty((h, 1 + 4 * w), np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = np.dstack([grey, alpha]).astype(">u2").view(np.uint8).reshape(h, 4 * w)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + png_chunk(b"IEND", b""))
