"""The request limits of the enhancer besides the body size (docs/serving-limits.md): the upload
limit (408), the compute limit counted from when the body has arrived (504), and a client that
goes away (its computation stops at the next tile pass)."""

from __future__ import annotations

import asyncio
import threading

from fastapi import Request

from serving.client import TIME_LIMIT_HEADER

UPLOAD_LIMIT_HEADER = "X-Upload-Limit-S"  # on the 408 of a body slower than upload_timeout_s


def upload_too_slow(limit_s: float) -> tuple[int, str, dict[str, str]]:
    """(status, message, headers) for a body that took longer than `limit_s` seconds to arrive:
    408, naming the upload; the connection closes (the rest of the body is not read)."""
    return (408, f"the upload took longer than this endpoint's {limit_s:.0f} s upload limit; check the connection "
                 "and send again, or send a smaller file", {UPLOAD_LIMIT_HEADER: f"{limit_s:.0f}", "Connection": "close"})


def compute_too_slow(limit_s: float) -> tuple[int, str, dict[str, str]]:
    """(status, message, headers) for an image whose computation passed `limit_s` seconds: 504,
    naming the compute limit, marked `X-Time-Limit-S` (clients do not retry it)."""
    return (504, f"the image took longer than this endpoint's {limit_s:.0f} s compute limit (counted from when the "
                 "upload arrived); send a smaller image, or deploy with a longer --request-timeout",
            {TIME_LIMIT_HEADER: f"{limit_s:.0f}"})


async def cancel_on_disconnect(request: Request, gone: threading.Event, task: asyncio.Task) -> None:
    """Once the request's body has been read, the next ASGI message is `http.disconnect` when the
    client goes away (through HAProxy, which drops the replica's connection when its client's
    closes, or Serve's proxy): then set `gone` (the compute thread stops at its next tile pass)
    and cancel the request's `task`. Serve cancels the handler on a disconnect too where it
    watches the connection itself; this also covers the requests it does not watch
    (`x-request-disconnect-disabled`, set by the stack's HAProxy on `Expect: 100-continue`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()
    task.cancel()
