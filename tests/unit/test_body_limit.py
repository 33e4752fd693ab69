"""An announced oversize body: refused 413 on its Content-Length, read to its end (kept nowhere)
when the client is sending it anyway, left unsent when the client waits for `100 Continue`."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from serving.body import HELD_BACK_HEADER, max_body_bytes, read_body
from translator import codec

MAX_PIXELS = 100  # limit: 1,000,800 bytes


def request(length: int, chunks: int, extra: dict[str, str] | None = None):
    """A Starlette request announcing `length` bytes, whose body arrives in `chunks` ASGI messages;
    -> (request, list of the messages the app has received)."""
    received = []
    size = length // chunks

    async def receive():
        i = len(received)
        received.append(i)
        return {"type": "http.request", "body": bytes(size), "more_body": i + 1 < chunks}

    headers = {"content-length": str(length), "content-type": "image/png", **(extra or {})}
    scope = {"type": "http", "method": "POST", "path": "/enhance",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), received


@pytest.mark.parametrize("extra, read_messages", [
    (None, 5),  # no Expect: the body is on its way, read to its end before the answer
    ({HELD_BACK_HEADER: "?1"}, 0),  # Expect: 100-continue through HAProxy: never asked for
])
def test_an_announced_oversize_body_is_refused_and_read_only_when_it_is_on_its_way(extra, read_messages):
    limit = max_body_bytes(MAX_PIXELS)
    req, received = request(5 * (limit // 5 + 1), 5, extra)
    with pytest.raises(codec.RequestError) as e:
        asyncio.run(read_body(req, MAX_PIXELS))
    assert e.value.status == 413 and "MB limit" in e.value.message
    assert len(received) == read_messages


def test_a_body_within_the_limit_is_returned_whole():
    req, received = request(4000, 4)
    assert asyncio.run(read_body(req, MAX_PIXELS)) == bytes(4000)
    assert len(received) == 4
