"""Request bytes -> image tensor and back, with the checks that keep a replica alive:
empty, not an image, truncated, too many pixels (decompression bombs) each get their status."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from translator import images

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
           "webp": ("WEBP", "image/webp")}
GRAY_MODES = {"L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "1"}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DecodedImage:
    def __init__(self, tensor: torch.Tensor, alpha: Image.Image | None, gray: bool, high_bit: bool = False):
        self.tensor, self.alpha, self.gray = tensor, alpha, gray
        self.high_bit = high_bit  # more than 8 bits per channel: the model runs in fp32


def decode(body: bytes, max_pixels: int) -> DecodedImage:
    if not body:
        raise RequestError(400, "empty request body: send an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
            if img.width * img.height > max_pixels:
                raise RequestError(413, f"image is {img.width}x{img.height} = {img.width * img.height / 1e6:.1f} MP, "
                                        f"over the {max_pixels / 1e6:.1f} MP limit")
            img.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(413, f"image has too many pixels (limit {max_pixels / 1e6:.1f} MP)") from None
    except UnidentifiedImageError:
        raise RequestError(415, "not an image Pillow can read (send PNG, JPEG, WebP, TIFF, BMP...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(400, f"broken or truncated image: {e}") from None
    gray = img.mode in GRAY_MODES
    rgb, alpha = images.split_alpha(img)
    return DecodedImage(images.to_tensor(rgb), alpha, gray, img.mode in images.HIGH_BIT_MODES)


def encode(out: torch.Tensor, src: DecodedImage, fmt: str = "png") -> tuple[bytes, str]:
    if fmt.lower() not in FORMATS:
        raise RequestError(400, f"unknown format {fmt!r}: use png, jpeg or webp")
    pil_fmt, media = FORMATS[fmt.lower()]
    img = images.to_pil(out)
    if src.gray:
        img = img.convert("L")
    if src.alpha is not None and pil_fmt != "JPEG":
        img = img.convert("LA" if src.gray else "RGB")
        img.putalpha(src.alpha)
    kwargs = {"quality": 95} if pil_fmt in ("JPEG", "WEBP") else {}
    return images.encode(img, pil_fmt, **kwargs), media
