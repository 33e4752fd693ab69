"""PIL <-> tensor conversion that handles what users actually upload.

EXIF orientation is applied; L/LA/P/RGBA/CMYK/I;16/I/F become RGB (16-bit is scaled, not
clipped); alpha is returned separately so callers can put it back.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def open_image(source: bytes | str | io.IOBase) -> Image.Image:
    """Open and fully decode (so truncated files fail here, not later)."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    img.load()
    return img


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """-> (RGB image, alpha channel or None), EXIF orientation applied."""
    img = ImageOps.exif_transpose(img) or img
    alpha = None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        img = rgba.convert("RGB")
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" and arr.max() > 255 else (1.0 if img.mode == "F" else 255.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    return img.convert("RGB"), alpha


def to_rgb(img: Image.Image) -> Image.Image:
    return split_alpha(img)[0]


def to_array(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> HxWx3 float32 in [0, 1]."""
    return np.asarray(to_rgb(img), dtype=np.float32) / 255.0


def from_array(arr: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL -> 1x3xHxW float32 in [-1, 1]."""
    arr = to_array(img)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def to_pil(x: torch.Tensor) -> Image.Image:
    """1x3xHxW or 3xHxW in [-1, 1] -> RGB PIL."""
    if x.dim() == 4:
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return from_array(arr)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def grid(rows: list[list[Image.Image]], pad: int = 4, labels: list[str] | None = None) -> Image.Image:
    """Rows of images -> one white-padded RGB image (sample grids, previews, demo output).

    `labels`: one caption per column (e.g. input / output / target, or A / B), drawn above it in
    black; the header is left out when None. Images of a column may differ in size.
    """
    from PIL import ImageDraw, ImageFont

    ncols = max(len(row) for row in rows)
    widths = [max(row[c].width for row in rows if c < len(row)) for c in range(ncols)]
    heights = [max(im.height for im in row) for row in rows]
    font = ImageFont.load_default()
    header = 0
    if labels and any(labels):
        header = max(font.getbbox(t)[3] for t in labels if t) + pad
        for c, text in enumerate(labels[:ncols]):  # a caption never runs into the next column
            widths[c] = max(widths[c], int(font.getlength(text)) + pad if text else 0)
    w = sum(widths) + pad * (ncols + 1)
    canvas = Image.new("RGB", (w, header + sum(heights) + pad * (len(rows) + 1)), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for c, cw in enumerate(widths):
        if labels and c < len(labels) and labels[c]:
            draw.text((x, pad), labels[c], fill="black", font=font)
        x += cw + pad
    y = pad + header
    for row, h in zip(rows, heights):
        x = pad
        for im, cw in zip(row, widths):
            canvas.paste(im.convert("RGB"), (x, y))
            x += cw + pad
        y += h + pad
    return canvas
