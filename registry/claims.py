"""A model's champion claim: `promote` and `rollback` read the champion and its history, then
write them back, and MLflow has no conditional writes, so two clients at once could lose each
other's change. Each holds the model's claim for its read-and-write: an object in the store
written with an S3 conditional write (`Storage.put_if`), so exactly one client gets it; the
other gets one `Error:` line. A claim whose client died expires after its TTL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Conflict, Storage

PREFIX = "registry/claims/"


def _busy(name: str, what: str) -> Img2ImgError:
    return Img2ImgError(f"another client is changing the champion of {name!r} ({what}); run this again "
                        "once it has finished (see `img2img models ls`)")


@contextmanager
def champion_claim(settings: Settings, name: str, what: str, ttl_s: float = 60.0) -> Iterator[None]:
    """Hold model `name`'s champion claim while the block runs (at most `ttl_s` seconds count:
    after that another client may take it over). `what` says what this client does (shown to
    the one refused). Raises Img2ImgError, before the block runs, when another client holds it."""
    storage, key, token = Storage(settings), f"{PREFIX}{name}.json", uuid.uuid4().hex
    body = json.dumps({"token": token, "what": what, "until": time.time() + ttl_s}).encode()
    try:
        storage.put_if(key, body, None)
    except Conflict:
        try:
            data, etag = storage.get_versioned(key)
            held = json.loads(data)
        except (Img2ImgError, ValueError):  # released meanwhile, or unreadable: the other is done or gone
            held, etag = {"until": 0}, None
        if float(held.get("until", 0)) > time.time():
            raise _busy(name, str(held.get("what", "a promotion or rollback"))) from None
        try:  # an expired claim: its client died; only one of those taking it over wins
            storage.put_if(key, body, etag)
        except Conflict:
            raise _busy(name, "a promotion or rollback") from None
    try:
        yield
    finally:
        try:
            if json.loads(storage.get_bytes(key)).get("token") == token:
                storage.delete(key)
        except (Img2ImgError, ValueError):  # gone already; or the store is down: it expires
            pass
