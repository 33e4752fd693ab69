"""What a request brings besides its parameters: the API key (checked against the sha256 digest
in the replica's config) and the image body, read within the size limit (an announced oversize
body is refused 413 before the client sends it where the client waits for `100 Continue`, and
read to its end without keeping a byte where it is on its way anyway; a body without
Content-Length is capped as it arrives)."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from translator import codec

# Set by the stack's HAProxy on `Expect: 100-continue` (cluster/ingress.py): Serve then leaves the
# body unread, and the client sends none of it until the app reads it.
HELD_BACK_HEADER = "x-request-disconnect-disabled"


def max_body_bytes(max_pixels: int) -> int:
    """The largest request body worth reading for images of up to `max_pixels`: uncompressed
    16-bit RGBA (8 bytes a pixel, e.g. a raw TIFF or BMP) plus 1 MB of headers and metadata."""
    return max_pixels * 8 + 1_000_000


def authorised(request: Request, key_sha256: str | None) -> bool:
    """Whether `request` carries the API key whose sha256 hex digest is `key_sha256`
    (`Authorization: Bearer KEY` or `X-API-Key: KEY`; compared in constant time). True when no
    key is configured."""
    if not key_sha256:
        return True
    auth = request.headers.get("authorization", "")
    key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), key_sha256)


async def read_body(request: Request, max_pixels: int) -> bytes:
    """The image bytes of `request`: the raw body (image/*, application/octet-stream or no type)
    or the multipart field `file`. Raises codec.RequestError: 413 over `max_body_bytes`, 415 for
    another content type, 400 for a multipart body without `file`."""
    limit = max_body_bytes(max_pixels)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:  # refused on its length: a huge upload never fills memory
        await discard(request)
        raise codec.RequestError(413, f"request body of {int(length) / 1e6:.0f} MB is over this endpoint's "
                                      f"{limit / 1e6:.0f} MB limit")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise codec.RequestError(400, "multipart request without a 'file' field")
        return await upload.read()
    if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
        await discard(request)
        raise codec.RequestError(415, f"content type {ctype!r} is not an image: send image/* or multipart 'file'")
    body, over = bytearray(), False
    async for chunk in request.stream():  # a body without Content-Length is capped as it arrives
        if over:
            continue  # past the limit: read to its end, kept nowhere (`discard`)
        body += chunk
        if len(body) > limit:
            body, over = bytearray(), True
    if over:
        raise codec.RequestError(413, f"request body is over this endpoint's {limit / 1e6:.0f} MB limit")
    return bytes(body)


async def discard(request: Request) -> int:
    """Before refusing a request whose body is on its way: read that body to its end, keeping
    none of it -> its length in bytes (0 when the client holds it back for `100 Continue`, or it
    was read already). A server that answers and closes with request bytes still unread resets
    the connection (TCP RST), and the client can lose the answer it had not read yet (nginx's
    lingering close does the same). Raises starlette.requests.ClientDisconnect if the client
    goes away."""
    if HELD_BACK_HEADER in request.headers or getattr(request, "_stream_consumed", False):
        return 0
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return n
