"""A model's champion claim: `promote` and `rollback` read the champion and its history, then
write them back, and MLflow has no conditional writes, so two clients at once could lose each
other's change. Each holds the model's claim for its read-and-write: an object in the store
written with an S3 conditional write (`Storage.put_if`), so exactly one client gets it; the
other gets one `Error:` line. A claim whose client died expires after its TTL.

A caller that must keep the endpoint in step with the champion (a rollback and its reload, a
rollout's promotion and its swap) holds the claim over both: the claim is re-entrant within a
thread, so the registry change inside takes no second claim."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Conflict, Storage

PREFIX = "registry/claims/"
_held = threading.local()  # (endpoint, bucket, key) this thread holds now


def _busy(name: str, what: str, until: float | None = None) -> Img2ImgError:
    by = f", by {time.strftime('%H:%M:%S UTC', time.gmtime(until))} at the latest" if until else ""
    return Img2ImgError(f"another client is changing the champion of {name!r} ({what}); run this again "
                        f"once it has finished{by} (see `img2img models ls`)")


@contextmanager
def champion_claim(settings: Settings, name: str, what: str, ttl_s: float = 60.0) -> Iterator[None]:
    """Hold model `name`'s champion claim while the block runs (at most `ttl_s` seconds count:
    after that another client may take it over). `what` says what this client does (shown to
    the one refused). Raises Img2ImgError, before the block runs, when another client holds it.
    Inside a block that holds it already (this thread), the claim is simply kept: its TTL is the
    outer one's."""
    storage, key, token = Storage(settings), f"{PREFIX}{name}.json", uuid.uuid4().hex
    mine = (settings.s3_endpoint, settings.bucket, key)
    ours = getattr(_held, "claims", None)
    if ours is None:
        ours = _held.claims = set()
    if mine in ours:
        yield
        return
    body = json.dumps({"token": token, "what": what, "until": time.time() + ttl_s}).encode()
    try:
        storage.put_if(key, body, None)
    except Conflict:
        held, until = {}, 0.0
        try:
            data, etag = storage.get_versioned(key)
        except Img2ImgError:  # released meanwhile: the other is done
            etag = None
        else:
            try:
                held = json.loads(data)
                until = float(held.get("until", 0))
            except (ValueError, TypeError, AttributeError):  # not a claim any client wrote: taken over
                held, until = {}, 0.0
        if time.time() < until < time.time() + 86400 * 365:  # a year on: not a claim any client wrote
            raise _busy(name, str(held.get("what", "a promotion or rollback")), until) from None
        try:  # an expired claim: its client died; only one of those taking it over wins
            storage.put_if(key, body, etag)
        except Conflict:
            raise _busy(name, "a promotion or rollback") from None
    ours.add(mine)
    try:
        yield
    finally:
        ours.discard(mine)
        try:
            if json.loads(storage.get_bytes(key)).get("token") == token:
                storage.delete(key)
        except (Img2ImgError, ValueError, AttributeError):  # gone already; or the store is down: it expires
            pass
