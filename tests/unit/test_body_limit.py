"""A body refused before it is used (413 over the limit, 415 not an image): read to its end, kept
nowhere, when the client is sending it anyway; left unsent when the client waits for `100 Continue`."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from serving.body import HELD_BACK_HEADER, max_body_bytes, read_body
from translator import codec

MAX_PIXELS = 100  # limit: 1,000,800 bytes


def request(length: int, chunks: int, extra: dict[str, str] | None = None, announce: bool = True):
    """A Starlette request announcing `length` bytes (chunked without `announce`), whose body
    arrives in `chunks` ASGI messages; -> (request, list of the messages the app has received)."""
    received = []
    size = length // chunks

    async def receive():
        i = len(received)
        received.append(i)
        return {"type": "http.request", "body": bytes(size), "more_body": i + 1 < chunks}

    headers = {**({"content-length": str(length)} if announce else {}), "content-type": "image/png", **(extra or {})}
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


@pytest.mark.parametrize("kind, over, extra, announce, status, read_messages", [
    ("chunked, over the limit", True, None, False, 413, 5),  # capped as it arrives, then read to its end
    ("not an image", False, {"content-type": "text/plain"}, True, 415, 5),
    ("not an image, held back", False, {"content-type": "text/plain", HELD_BACK_HEADER: "?1"}, True, 415, 0),
])
def test_every_refusal_of_a_body_on_its_way_reads_it_to_the_end(kind, over, extra, announce, status, read_messages):
    limit = max_body_bytes(MAX_PIXELS)
    req, received = request(5 * (limit // 5 + 1) if over else 5000, 5, extra, announce)
    with pytest.raises(codec.RequestError) as e:
        asyncio.run(read_body(req, MAX_PIXELS))
    assert e.value.status == status, kind
    assert len(received) == read_messages, kind


def test_discard_reads_a_body_once_and_leaves_a_held_back_one_unsent():
    from serving.body import discard

    req, received = request(4000, 4)
    assert asyncio.run(discard(req)) == 4000 and len(received) == 4
    assert asyncio.run(discard(req)) == 0  # already read: nothing more to drop
    held, received = request(4000, 4, {HELD_BACK_HEADER: "?1"})
    assert asyncio.run(discard(held)) == 0 and received == []
