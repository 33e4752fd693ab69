"""PIL <-> tensor conversion that handles what users actually upload.

EXIF orientation is applied; L/LA/P/RGBA/CMYK/I;16/I/F become RGB (16-bit is scaled, not
clipped); alpha is returned separately so callers can put it back.

`read_picture` / `write_picture` keep a whole picture: the sample type and value range (16-bit
PNG through OpenCV, TIFFs with more than 8 bits or float samples through tifffile: see
`translator.samples`), grey or colour, alpha, the ICC profile and EXIF.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from translator import samples

if TYPE_CHECKING:
    import torch

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def open_image(source: bytes | str | io.IOBase) -> Image.Image:
    """Open and fully decode (so truncated files fail here, not later)."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    img.load()
    return img


def open_or_none(data: bytes) -> Image.Image | None:
    """Pillow's lazy view of `data`, or None for a TIFF only tifffile reads (float RGB...).
    Raises PIL.UnidentifiedImageError for anything else Pillow cannot identify."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if samples.is_tiff(data):
            return None
        raise


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """-> (RGB image, alpha channel or None), EXIF orientation applied."""
    img = ImageOps.exif_transpose(img) or img
    alpha = None
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
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
    import torch  # here, not at the top: the data pipeline's decode tasks use this module without torch

    arr = to_array(img)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def to_pil(x: torch.Tensor) -> Image.Image:
    """1x3xHxW or 3xHxW in [-1, 1] -> RGB PIL."""
    if x.dim() == 4:
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return from_array(arr)


# zlib level of the 8-bit PNGs we write: 1 encodes a 256 px photo in ~5 ms against ~18 ms at
# Pillow's default 6 (1024 px: 67 vs 341 ms) for files ~7-13% larger; lossless either way.
PNG_COMPRESS_LEVEL = 1


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


# ---- whole pictures: bit depth, colour profile and metadata kept end to end ----------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION = 0x0112
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
WRITE_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
                 "webp": ("WEBP", "image/webp"), "tiff": ("TIFF", "image/tiff"), "tif": ("TIFF", "image/tiff")}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, what Pillow's convert("L") uses


@dataclass
class Picture:
    """A decoded image and what it takes to write a result back like it.

    pixels: HxWx3 float32 in [0, 1] (grey sources repeated on 3 channels), EXIF orientation applied.
    alpha: HxW array in the source's sample type, as stored, or None; never processed.
    gray: the source had one colour channel (the output gets one too).
    bits: the sample depth of the source: 8, 16 (16-bit PNG/TIFF in -> 16-bit PNG/TIFF out), 32, 64.
    scale, offset: the source samples are `pixels * scale + offset` (`samples.value_range`): 255
        and 0 for 8-bit; for 16-bit sources the smallest 2**k - 1 (k >= 8) covering the image's
        largest value, so 12-bit sensor data stored in a 16-bit PNG (0-4095) is normalised to the
        full [0, 1] and written back in 0-4095, not crushed; floats by their own range (0-4 HDR:
        scale 4).
    icc_profile: the embedded ICC profile bytes, or None.
    exif: EXIF bytes (TIFF layout, no `Exif\\0\\0` prefix) minus the orientation tag, or None.
    frames: frames/pages in the file; only the first is decoded (animated GIF, multi-page TIFF).
    dtype: the source's numpy sample type: uint8 and uint16 are written to any format (16-bit to
        PNG/TIFF); any other (int32, float32...) only to TIFF, which keeps it (`wide`).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    gray: bool = False
    bits: int = 8
    scale: int = 255
    icc_profile: bytes | None = None
    exif: bytes | None = None
    frames: int = 1
    dtype: str = "uint8"
    offset: float = 0.0

    @property
    def wide(self) -> bool:
        """Samples only TIFF can hold back (signed, 32-bit, float)."""
        return self.dtype not in ("uint8", "uint16")

    def describe(self, container: str = "") -> str:
        """e.g. '32-bit float RGB', '16-bit integer grey+alpha' (for messages)."""
        chans = (1 if self.gray else 3) + (self.alpha is not None)
        return samples.describe(np.dtype(self.dtype), chans, container).strip()


def _tiff_needs_tifffile(img: Image.Image) -> bool:
    """A TIFF with more than 8 bits a sample or non-unsigned samples: Pillow would read it as
    8-bit or 1-channel only (BitsPerSample 258, SampleFormat 339; 1 = unsigned integer)."""
    bits, fmt = img.tag_v2.get(258, (8,)), img.tag_v2.get(339, (1,))
    bits, fmt = (v if isinstance(v, tuple) else (v,) for v in (bits, fmt))
    return max(bits) > 8 or set(fmt) != {1}


def is_high_bit(data: bytes, img: Image.Image | None) -> bool:
    """More than 8 bits a sample (or float): a 16-bit PNG (IHDR bit depth at byte 24), a TIFF
    Pillow reads as 8-bit or cannot open (`img` None), or a Pillow I/F mode."""
    if data[:8] == PNG_SIGNATURE and len(data) > 25:
        return data[24] == 16
    if img is None or img.format == "TIFF":
        return img is None or _tiff_needs_tifffile(img)
    return img.mode in HIGH_BIT_MODES


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an HxW or HxWxC array of any dtype, as
    `ImageOps.exif_transpose` does to a Pillow image (TIFF/EXIF orientation tag 274)."""
    if orientation in (5, 6, 7, 8):
        arr = np.swapaxes(arr, 0, 1)  # transpose, then flip below
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        arr = arr[:, ::-1]
    if orientation in (3, 4):
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def _metadata(img: Image.Image) -> tuple[bytes | None, bytes | None, int]:
    icc = img.info.get("icc_profile") or None
    exif = None
    if img.format != "TIFF":  # a TIFF's "EXIF" is its own image directory: not metadata to copy
        tags = Image.Exif()
        tags.load(img.getexif().tobytes())  # a copy: the image's own EXIF still orients it
        if ORIENTATION in tags:
            del tags[ORIENTATION]
        if len(tags):
            exif = tags.tobytes().removeprefix(b"Exif\x00\x00")
    return icc, exif, int(getattr(img, "n_frames", 1) or 1)


def _from_samples(arr: np.ndarray, orientation: int, icc: bytes | None, exif: bytes | None,
                  frames: int) -> Picture:
    """HxW (grey), HxWx2 (grey+alpha), HxWx3 (RGB) or HxWx4 (RGBA) samples of a kept dtype ->
    Picture normalised by the image's own range (`samples.value_range`).
    Raises samples.UnsupportedImage for NaN/infinite floats or a dtype that is not kept."""
    arr = _orient(arr, orientation)
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha, arr = arr[..., -1].copy(), arr[..., :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    gray = arr.ndim == 2
    what = samples.describe(arr.dtype, (1 if gray else 3) + (alpha is not None), "image").removesuffix(" image")
    samples.check_dtype(arr.dtype, what + " image")
    offset, scale = samples.value_range(arr, "this " + what + " image")
    px = samples.normalise(arr, offset, scale)
    rgb = np.repeat(px[..., None], 3, -1) if gray else px
    return Picture(rgb, alpha, gray, arr.dtype.itemsize * 8, scale, icc, exif, frames, arr.dtype.name, offset)


def _decode_png16(data: bytes, img: Image.Image) -> Picture | None:
    import cv2  # Pillow has no 16-bit RGB mode

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        if samples.png_colour_type(data) in (0, 4):  # OpenCV expands grey (+alpha) to BGR(A)
            arr = np.dstack([arr[..., 0], arr[..., 3]]) if arr.shape[2] == 4 else arr[..., 0]
    icc, exif, frames = _metadata(img)
    return _from_samples(arr, img.getexif().get(ORIENTATION, 1), icc, exif, frames)


def read_picture(data: bytes, img: Image.Image | None = None) -> Picture:
    """Encoded image bytes -> Picture (see there). Pass `img` when the caller already opened the
    bytes with Pillow (to check its size first). A TIFF Pillow cannot open is read by tifffile.
    Raises what Pillow raises for unreadable data, samples.UnsupportedImage (naming the sample
    format) for a readable image whose samples are not kept."""
    if samples.is_tiff(data) and (img is None or _tiff_needs_tifffile(img)):
        arr, orientation, icc, frames = samples.read_tiff(data)
        return _from_samples(arr, orientation, icc, None, frames)
    img = img if img is not None else Image.open(io.BytesIO(data))
    if data[:8] == PNG_SIGNATURE and len(data) > 25 and data[24] == 16:
        pic = _decode_png16(data, img)
        if pic is not None:
            return pic
    img.load()
    icc, exif, frames = _metadata(img)
    if img.mode in HIGH_BIT_MODES:  # 16/32-bit grey and float that Pillow reads itself (PGM...)
        arr = np.asarray(img)
        arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype.kind == "i" and (not arr.size or 0 <= arr.min() and arr.max() <= 65535):
            arr = arr.astype(np.uint16)
        return _from_samples(arr, img.getexif().get(ORIENTATION, 1), icc, exif, frames)
    gray = img.mode in ("L", "LA", "La", "1")
    rgb, alpha = split_alpha(img)
    return Picture(np.asarray(rgb, dtype=np.float32) / 255.0, None if alpha is None else np.asarray(alpha),
                   gray, 8, 255, icc, exif, frames)


def _profile_fits(icc: bytes | None, gray: bool) -> bytes | None:
    """The profile, if its colour space (ICC header bytes 16-20) matches the output's; a CMYK
    source's profile would mis-colour the RGB result, so it is dropped."""
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if gray else b"RGB ") else None


def _add_png_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP/eXIf chunks right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    extra = b""
    if icc:
        extra += samples.png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        extra += samples.png_chunk(b"eXIf", exif)
    return png[:33] + extra + png[33:]


def _write_16(codes: np.ndarray, alpha: np.ndarray | None, fmt: str, icc: bytes | None,
              exif: bytes | None, level: int) -> bytes:
    import cv2

    if alpha is not None:
        alpha = alpha.astype(np.uint16) if alpha.dtype == np.uint16 else alpha.astype(np.uint16) * 257
    if fmt == "TIFF":
        return samples.write_tiff(codes, alpha, icc)
    if codes.ndim == 2 and alpha is not None:  # OpenCV and Pillow write no 16-bit grey+alpha PNG
        return _add_png_chunks(samples.write_png16_grey_alpha(codes, alpha, level), icc, exif)
    if codes.ndim == 3:
        codes = cv2.cvtColor(codes, cv2.COLOR_RGB2BGR)
        if alpha is not None:
            codes = np.dstack([codes, alpha])
    ok, png = cv2.imencode(".png", codes, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ValueError("could not encode a 16-bit PNG")
    return _add_png_chunks(png.tobytes(), icc, exif)


def write_picture(pixels: np.ndarray, like: Picture, fmt: str = "png",
                  png_compress_level: int = PNG_COMPRESS_LEVEL) -> tuple[bytes, str]:
    """HxWx3 float pixels in [0, 1] (e.g. a network's output for `like`) -> (encoded bytes, media
    type), written like the source: grey stays grey, alpha is put back, the ICC profile and EXIF
    (minus orientation, already applied) are carried, and a 16-bit source gives 16-bit PNG/TIFF
    in its own value range (`like.scale`); signed, 32-bit and float sources (`like.wide`) give
    TIFF in their own type and range. JPEG and WebP are 8-bit by nature. 8-bit PNG uses zlib
    level `png_compress_level` (0-9; PNG is lossless at every level).
    Raises KeyError for a format other than png, jpeg, webp, tiff; ValueError for a wide
    source in a format other than TIFF."""
    pil_fmt, media = WRITE_FORMATS[fmt.lower()]
    pixels = np.clip(pixels, 0.0, 1.0)
    if like.alpha is not None and like.alpha.shape[:2] != pixels.shape[:2]:  # an upscaler's output
        like = replace(like, alpha=resize_alpha(like.alpha, pixels.shape[:2]))
    if like.gray:
        pixels = pixels @ LUMA
    icc = _profile_fits(like.icc_profile, like.gray)
    if like.wide:  # signed, 32-bit or float samples: TIFF holds them as they came
        if pil_fmt != "TIFF":
            raise ValueError(f"a {like.describe()} image can only be written as TIFF, not {fmt}")
        return samples.write_tiff(samples.restore(pixels, like.dtype, like.offset, like.scale), like.alpha, icc), media
    if like.bits == 16 and pil_fmt in ("PNG", "TIFF"):
        codes = samples.restore(pixels, "uint16", like.offset, like.scale)
        return _write_16(codes, like.alpha, pil_fmt, icc, like.exif if pil_fmt == "PNG" else None,
                         png_compress_level), media
    img = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="L" if like.gray else "RGB")
    if like.alpha is not None and pil_fmt != "JPEG":
        alpha = like.alpha if like.alpha.dtype == np.uint8 else (like.alpha >> 8).astype(np.uint8)
        img.putalpha(Image.fromarray(alpha, mode="L"))
    kwargs: dict = {"quality": 95} if pil_fmt in ("JPEG", "WEBP") else {}
    if pil_fmt == "PNG":
        kwargs["compress_level"] = png_compress_level
    if icc:
        kwargs["icc_profile"] = icc
    if like.exif:
        kwargs["exif"] = b"Exif\x00\x00" + like.exif if pil_fmt in ("JPEG", "WEBP") else like.exif
    return encode(img, pil_fmt, **kwargs), media


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxW alpha plane (any numeric dtype) resized to `size` (H, W) by its own bicubic pass (the
    colour went through the model; transparency is not the model's to invent), clipped to the
    plane's own range and returned in its dtype."""
    h, w = size
    out = np.asarray(Image.fromarray(alpha.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))
    out = np.clip(out, float(alpha.min()), float(alpha.max()))
    return np.rint(out).astype(alpha.dtype) if np.issubdtype(alpha.dtype, np.integer) else out.astype(alpha.dtype)


def picture_tensor(pic: Picture) -> torch.Tensor:
    """Picture -> 1x3xHxW float32 in [-1, 1] (the network's input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pic.pixels)).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def tensor_pixels(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW or 3xHxW in [-1, 1] -> HxWx3 float32 in [0, 1] (for `write_picture`)."""
    if x.dim() == 4:
        x = x[0]
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
