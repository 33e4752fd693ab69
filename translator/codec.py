"""Request bytes -> image tensor and back, with the checks that keep a replica alive:
empty, not an image, truncated, too many pixels (decompression bombs) each get their status.

The output is written like the input (`translator.images.write_picture`): same size (times the
model's scale for super-resolution, alpha upscaled by its own bicubic pass), grey or
colour, alpha, ICC profile, EXIF (orientation applied), and 16-bit PNG/TIFF in -> 16-bit out in
the input's value range; signed, 32-bit and float TIFF in -> TIFF of that sample type out, in the
input's range (other output formats are refused for them, 400). Sample formats that are not kept
are refused with 415 naming them (docs/image-formats.md has the table). Multi-frame files (animated GIF, multi-page TIFF) are processed as their
first frame; `frames` says how many there were (the endpoint puts it in `X-Input-Frames`).
"""

from __future__ import annotations

import math
import struct
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from translator import images, samples, video

FORMATS = images.WRITE_FORMATS
DEPLOY_COMMAND = "img2img serve deploy --model NAME@champion"  # how an endpoint's pixel limit is raised
VIDEO_REFUSAL = ("a video file (recognised by its container): the endpoint enhances one image per request; "
                 "enhance a video on the cluster with: img2img batch movie.mp4 -o movie-enhanced.mp4 --model NAME@champion")
# The largest side each output format can hold (WebP's VP8 header: 14 bits; JPEG's SOF: 16 bits);
# past it Pillow fails only after the model has run, so requests are refused before.
MAX_SIDE = {"webp": 16383, "jpeg": 65535, "jpg": 65535}


def over_pixel_limit(width: int, height: int, max_pixels: int, command: str, scale: int = 1) -> str | None:
    """The refusal of a `width` x `height` image over `max_pixels`, or whose output (`scale` times
    each side: a super-resolution model's) is, saying how to raise the limit with `command` (e.g.
    "img2img serve deploy --model NAME@champion"); None when both fit."""
    if width * height > max_pixels:
        return (f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the {max_pixels / 1e6:.1f} MP "
                f"limit; raise it with: {command} --max-megapixels {math.ceil(width * height / 1e6)}")
    out_w, out_h = width * scale, height * scale
    if out_w * out_h <= max_pixels:
        return None
    return (f"a {scale}x model makes this {width}x{height} image {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} MP, "
            f"over the {max_pixels / 1e6:.1f} MP limit on the output; send at most "
            f"{max_pixels / scale ** 2 / 1e6:.2f} MP, or raise it with: {command} --max-megapixels "
            f"{math.ceil(out_w * out_h / 1e6)}")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DecodedImage:
    """A decoded request: `tensor` 1x3xHxW float32 in [-1, 1] and the `picture` it came from."""

    def __init__(self, picture: images.Picture, scale: int = 1):
        self.picture = picture
        self.tensor = images.picture_tensor(picture)
        self.scale = scale  # the output is `scale` times each side (a super-resolution model's)

    @property
    def frames(self) -> int:
        return self.picture.frames

    @property
    def bits(self) -> int:
        return self.picture.bits

    @property
    def high_bit(self) -> bool:
        """More than 8 bits per channel: the model runs in fp32 (bf16 would lose levels)."""
        return self.picture.bits > 8 or self.picture.wide


def decode(body: bytes, max_pixels: int, raise_with: str = DEPLOY_COMMAND, scale: int = 1) -> DecodedImage:
    """Raises RequestError: 400 empty/truncated, 413 when the image or its output (`scale` times
    each side, the model's descriptor scale) is over `max_pixels` (saying to raise the limit with
    `raise_with` --max-megapixels N), 415 not an image (a video, by its container signature:
    naming `img2img batch`). The size is read from the header, before any pixel is decoded."""
    if not body:
        raise RequestError(400, "empty request body: send an image")
    if video.is_video(body[:200]):
        raise RequestError(415, VIDEO_REFUSAL)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard (89 MP) must not cut a limit set above it: ours is checked below.
            warnings.simplefilter("error" if max_pixels <= (Image.MAX_IMAGE_PIXELS or 0) else "ignore",
                                  Image.DecompressionBombWarning)
            img = images.open_or_none(body)
            width, height = (img.width, img.height) if img is not None else samples.tiff_size(body)
            refusal = over_pixel_limit(width, height, max_pixels, raise_with, scale)
            if refusal:
                raise RequestError(413, refusal)
            picture = images.read_picture(body, img)
    except RequestError:
        raise
    except samples.UnsupportedImage as e:
        raise RequestError(415, str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(413, f"image has too many pixels (limit {max_pixels / 1e6:.1f} MP)") from None
    except UnidentifiedImageError:
        raise RequestError(415, "not an image Pillow can read (send PNG, JPEG, WebP, TIFF, BMP...)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # struct: tifffile's short reads
        raise RequestError(400, f"broken or truncated image: {e}") from None
    return DecodedImage(picture, scale)


def check_format(fmt: str) -> None:
    """Raises RequestError 400 for an output format the endpoint cannot write."""
    if fmt.lower() not in FORMATS:
        raise RequestError(400, f"unknown format {fmt!r}: use png, jpeg, webp or tiff")


def check_output(fmt: str, decoded: DecodedImage) -> None:
    """Raises RequestError 400 when the output format cannot hold the image: this size (WebP
    16383 px a side, JPEG 65535) or its samples (signed, 32-bit, float: TIFF only), before any
    model time is spent on it."""
    side, limit = max(decoded.tensor.shape[-2:]) * decoded.scale, MAX_SIDE.get(fmt.lower())
    if decoded.picture.wide and fmt.lower() not in ("tiff", "tif"):
        raise RequestError(400, f"a {decoded.picture.describe()} image is written back only as TIFF, which keeps "
                                f"its samples; {fmt} cannot: ask for tiff (format=tiff, --format tiff)")
    if limit and side > limit:
        raise RequestError(400, f"{fmt} holds at most {limit} px a side and this image's output has {side}: "
                                "ask for png or tiff")


def encode(out: torch.Tensor, src: DecodedImage, fmt: str = "png",
           png_compress_level: int = images.PNG_COMPRESS_LEVEL) -> tuple[bytes, str]:
    """Network output (1x3xHxW float in [-1, 1]) -> (bytes, media type) written like `src`; 8-bit
    PNG at zlib level `png_compress_level` (0-9, lossless at every level). Raises RequestError 400
    for an unknown format."""
    check_format(fmt)
    return images.write_picture(images.tensor_pixels(out), src.picture, fmt, png_compress_level)
