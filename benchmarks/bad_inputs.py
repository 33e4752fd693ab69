"""Seventeen classes of bad input to POST /enhance, each with the 4xx it must get (shared by the
reliability benchmark and the integration tests)."""

from __future__ import annotations

import io

from PIL import Image


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def bad_inputs() -> dict[str, dict]:
    """name -> {"content": bytes or None, "files": multipart or None, "ctype", "params", "status"}."""
    png = _encoded(Image.new("RGB", (64, 64), "blue"))
    jpeg = _encoded(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    corrupt = bytearray(png)
    corrupt[45:60] = b"\xff" * 15  # inside IDAT: the CRC no longer matches
    cases = {
        "empty body": dict(content=b"", status=400),
        "not an image": dict(content=b"definitely not an image", status=415),
        "truncated PNG": dict(content=png[:60], status=400),
        "truncated JPEG": dict(content=jpeg[: len(jpeg) // 2], ctype="image/jpeg", status=400),
        "corrupt PNG data": dict(content=bytes(corrupt), status=400),
        "text content type": dict(content=b"hello", ctype="text/plain", status=415),
        "over the pixel limit": dict(content=_encoded(Image.new("1", (80000, 1000)), "BMP"), ctype="image/bmp",
                                     status=413),
        "decompression bomb": dict(content=_encoded(Image.new("1", (30000, 30000))), status=413),
        "multipart without file": dict(files={"other": ("a.txt", b"x", "text/plain")}, status=400),
        "unknown output format": dict(content=png, params={"format": "gif"}, status=400),
        "tile out of range": dict(content=png, params={"tile": 3}, status=400),
        "unknown direction": dict(content=png, params={"direction": "sideways"}, status=400),
        "tile zero": dict(content=png, params={"tile": 0}, status=400),
        "tile not a number": dict(content=png, params={"tile": "abc"}, status=400),
        "overlap not a whole number": dict(content=png, params={"overlap": "1.5"}, status=400),
        "multipart without a boundary": dict(content=b"--x\r\nnot a form", ctype="multipart/form-data", status=400),
        "wider than WebP holds": dict(content=_encoded(Image.new("RGB", (16400, 4))), params={"format": "webp"},
                                      status=400),
    }
    for case in cases.values():
        case.setdefault("content", None)
        case.setdefault("files", None)
        case.setdefault("ctype", "image/png")
        case.setdefault("params", {})
    return cases
