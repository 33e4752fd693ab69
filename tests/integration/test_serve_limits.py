"""What real networks do to the endpoint, on ONE replica behind the stack's ingress: a client that
goes away mid-request frees the replica at the next tile pass; the upload has its own limit
(408), separate from the compute limit (504), each named in its error; and a body announced
over the size limit with `Expect: 100-continue` is refused 413 before the client sends it."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import encoded, endpoint_restored, register_tiny_autoencoder

pytestmark = pytest.mark.integration
UPLOAD_LIMIT_S = 6


def noise(h: int, w: int, seed: int = 0) -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)))


def gradient(h: int, w: int) -> bytes:
    """A smooth photo-sized image: a small PNG (quick to send and decode), full model work."""
    y, x = np.mgrid[0:h, 0:w]
    return encoded(Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)))


BIG, SMALL = gradient(3072, 4096), noise(48, 64, 2)  # 48 tiles of 512 px (about 9 s on 2 idle cores); 1 tile


def connect(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=120)


def head(url: str, length: int, expect: bool = False) -> bytes:
    """The request line and headers of a `POST /enhance` of a `length`-byte PNG."""
    u = urlparse(url)
    return (f"POST /enhance HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode()


def send_head(sock: socket.socket, url: str, length: int, expect: bool = False) -> None:
    sock.sendall(head(url, length, expect))


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status line, headers, a Content-Length body) read off `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def post(url: str, body, **kw) -> httpx.Response:
    return httpx.post(url + "/enhance", content=body, headers={"Content-Type": "image/png"}, timeout=300, **kw)


@pytest.fixture(scope="module")
def one_replica(stack):
    """One replica of an untrained autoencoder wide enough that a 4096 x 3072 photo takes several
    seconds on its one thread here, a long compute limit and a short upload limit; the endpoint
    serves what it served before once the module is done."""
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    version = register_tiny_autoencoder(stack, "test-limits", seed=3, nf=64)
    with endpoint_restored(stack):  # the other modules' endpoint, with its default limits, afterwards
        deploy(get_settings(), f"test-limits/{version}",
               ReplicaOptions(request_timeout_s=300, upload_timeout_s=UPLOAD_LIMIT_S),
               Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        yield stack.serve_url, f"test-limits/{version}"


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_an_abandoned_request_stops_computing_and_frees_the_replica(one_replica, expect):
    """A closed tab or a Ctrl-C after 2 s: the next small request is answered long before the
    abandoned one would have finished (timed against this run's own full large request). Both
    ways of watching the client: Serve's own, for a plain request sent whole in one write (as a
    fast client on this host sends it: the case HAProxy stops watching when it splices the body),
    and the app's for requests Serve leaves unwatched (`Expect: 100-continue`)."""
    url, _ = one_replica
    t0 = time.monotonic()
    assert post(url, BIG).status_code == 200
    full = time.monotonic() - t0
    assert full > 4, full  # enough tile passes for the comparison to mean something (5.9 s on an idle 2-core run)

    sock = connect(url)
    t0 = time.monotonic()
    if expect:
        send_head(sock, url, len(BIG), expect)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BIG)
    else:
        sock.sendall(head(url, len(BIG)) + BIG)
    time.sleep(2)
    sock.close()  # abandoned, like a closed browser tab
    r = post(url, SMALL)
    small_at = time.monotonic() - t0  # since the large request was sent
    assert r.status_code == 200
    assert small_at < 0.6 * full, (small_at, full)  # not queued behind the rest of the large one


def test_expect_100_continue_over_the_size_limit_is_refused_before_the_body(one_replica):
    from serving.body import max_body_bytes
    from serving.options import MAX_PIXELS

    url, _ = one_replica
    sock = connect(url)
    send_head(sock, url, max_body_bytes(MAX_PIXELS) + 1, expect=True)  # one byte over the default limit's body
    status, headers, body = read_response(sock)  # nothing of the body sent
    sock.close()
    assert status == 413 and "MB limit" in json.loads(body)["error"]

    sock = connect(url)  # within the limit, the client is asked for the body and answered
    send_head(sock, url, len(SMALL), expect=True)
    assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(SMALL)
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 200 and body.startswith(b"\x89PNG")


def test_an_upload_slower_than_its_limit_gets_408_naming_the_upload(one_replica):
    url, _ = one_replica
    sock = connect(url)
    send_head(sock, url, len(SMALL))
    sock.sendall(SMALL[: len(SMALL) // 2])  # and then nothing: a stalled uplink
    t0 = time.monotonic()
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 408 and headers["x-upload-limit-s"] == str(UPLOAD_LIMIT_S)
    assert "upload limit" in json.loads(body)["error"] and time.monotonic() - t0 < UPLOAD_LIMIT_S + 30
    assert post(url, SMALL).status_code == 200  # and the replica serves on


def test_the_compute_limit_starts_when_the_body_has_arrived(one_replica):
    """A body trickled over longer than the compute limit is answered 200; an image whose
    compute takes longer gets 504 naming the compute limit."""
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    url, model = one_replica
    deploy(get_settings(), model, ReplicaOptions(request_timeout_s=2, upload_timeout_s=60),
           Scaling(min_replicas=1, max_replicas=1), wait_s=300)

    def trickle():
        step = len(SMALL) // 10 + 1
        for i in range(0, len(SMALL), step):
            time.sleep(0.5)  # 5 s in all: longer than the 2 s compute limit
            yield SMALL[i:i + step]

    t0 = time.monotonic()
    r = post(url, trickle())
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 > 4
    r = post(url, BIG)
    assert r.status_code == 504 and r.headers["x-time-limit-s"] == "2"
    assert "compute limit" in r.json()["error"]
