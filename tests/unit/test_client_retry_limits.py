"""The client's retry policy against a small real HTTP server that fails like a dying replica,
the sizing of request limits and graceful shutdown, and failing fast on a service that is down."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cluster.errors import Img2ImgError
from serving.client import (
    RetryPolicy,
    check_outputs,
    client_timeout,
    enhance_bytes,
    enhance_files,
    unique_files,
)
from serving.options import SHUTDOWN_MARGIN_S, time_limits

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_wait_s=0.05)


class Flaky(BaseHTTPRequestHandler):
    """Answers each POST with the next status of `script` (then 200 forever)."""

    script: list[int] = []
    calls: list[int] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = self.script.pop(0) if self.script else 200
        self.calls.append(status)
        if status == 999:  # hangs past the client's read timeout
            time.sleep(1.5)
            status = 200
        body = b"enhanced" if status == 200 else b'{"error": "replica died"}'
        self.send_response(status if status != 5040 else 504)
        if status == 503:
            self.send_header("Retry-After", "0")
        if status == 5040:  # the endpoint's own time limit, not a gateway's
            self.send_header("X-Time-Limit-S", "30")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up first (the read-timeout case)
            pass

    def do_GET(self):  # noqa: N802
        body = b'{"name": "m", "request_timeout_s": 42}'
        self.send_response(200 if self.path == "/model" else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Flaky.calls = []
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_5xx_answers_are_retried_until_success(server):
    Flaky.script = [500, 502, 503]
    data, _ = enhance_bytes(server, b"img", policy=FAST)
    assert data == b"enhanced" and Flaky.calls == [500, 502, 503, 200]


def test_client_errors_are_not_retried(server):
    Flaky.script = [415]
    with pytest.raises(Img2ImgError, match="415"):
        enhance_bytes(server, b"img", policy=FAST)
    assert Flaky.calls == [415]


def test_retries_are_bounded_and_reported_per_file(server, tmp_path: Path):
    Flaky.script = [500] * 10
    src = tmp_path / "a.png"
    src.write_bytes(b"img")
    [outcome] = enhance_files([src], tmp_path / "out", server, policy=FAST, parallel=1)
    assert outcome.error and "after 4 attempts" in outcome.error and outcome.retried == ["500", "500", "500"]
    assert len(Flaky.calls) == 4 and not list((tmp_path / "out").iterdir())
    # the report says the attempts once: "... (4 attempts; retried after 500 x3)"
    assert outcome.describe().count("attempts") == 1 and outcome.describe().endswith("(4 attempts; retried after 500 x3)")
    Flaky.script = [503]
    [outcome] = enhance_files([src], tmp_path / "out", server, policy=FAST, parallel=1)
    assert outcome.output.read_bytes() == b"enhanced" and outcome.attempts == 2
    assert "retried after 503" in outcome.describe()


def test_the_endpoints_own_time_limit_and_a_read_timeout_are_final_not_retried(server):
    Flaky.script = [504, 5040]  # a gateway's 504 is retried; the endpoint's own is the answer
    with pytest.raises(Img2ImgError, match="504"):
        enhance_bytes(server, b"img", policy=FAST)
    assert Flaky.calls == [504, 5040]
    Flaky.calls, Flaky.script = [], [999]  # retrying would send the same work to a busy replica again
    with pytest.raises(Img2ImgError, match=r"no answer from .* within 1 s .*not retried"):
        enhance_bytes(server, b"img", policy=FAST, timeout=1)
    assert Flaky.calls == [999]  # sent once


def test_the_client_waits_longer_than_the_endpoints_time_limit(server):
    assert client_timeout(server) == 42 + 60  # from GET /model, so the endpoint's 504 comes first
    assert client_timeout("http://127.0.0.1:9") == 900  # says nothing: a generous default


def test_inputs_that_would_write_one_output_are_refused_before_sending(server, tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.jpg", "b/x.jpg", "a/y.jpg", "a/y.png"):
        (tmp_path / p).write_bytes(b"img")
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    for pair in ((a, b), (tmp_path / "a" / "y.jpg", tmp_path / "a" / "y.png")):
        with pytest.raises(Img2ImgError, match="would both be written to .*enhanced.png"):
            enhance_files(list(pair), tmp_path / "out", server, policy=FAST)
    assert Flaky.calls == [] and not (tmp_path / "out").exists()
    check_outputs([a, a, tmp_path / "a" / ".." / "a" / "x.jpg"], tmp_path / "out", "png")  # one file, named thrice
    assert unique_files([a, b, a]) == [a, b]
    [outcome] = enhance_files([a, a], tmp_path / "out", server, policy=FAST)
    assert outcome.output.read_bytes() == b"enhanced" and Flaky.calls == [200]


def test_an_unreachable_endpoint_is_named_within_seconds():
    t0 = time.monotonic()
    with pytest.raises(Img2ImgError, match=r"cannot reach the endpoint at http://127.0.0.1:9 .*after 4 attempts"):
        enhance_bytes("http://127.0.0.1:9", b"img", policy=FAST)
    assert time.monotonic() - t0 < 10


def test_an_unreachable_mlflow_is_named_within_seconds():
    from registry.refs import resolve

    t0 = time.monotonic()
    with pytest.raises(Img2ImgError, match=r"^cannot reach MLflow at http://127.0.0.1:9;"):
        resolve("http://127.0.0.1:9", "photos@champion")
    assert time.monotonic() - t0 < 15


def test_time_limits_cover_the_longest_accepted_request():
    # 16 MP at 3.5 s/MP = 56 s alone; limit covers 3x that; shutdown outlasts the limit
    limit, grace = time_limits(16_000_000, 3.5)
    assert limit >= 3 * 56 and grace == limit + SHUTDOWN_MARGIN_S
    assert time_limits(1_000_000, 0.001)[0] == 60  # never under a minute
    assert time_limits(16_000_000, 3.5, request_timeout_s=30) == (30, 30 + SHUTDOWN_MARGIN_S)


def test_two_way_generator_serves_both_directions():
    import torch

    from translator.nets.twoway import TwoWayGenerator

    g = TwoWayGenerator(torch.nn.Identity(), torch.nn.Hardtanh(-0.5, 0.5))
    x = torch.ones(1, 3, 4, 4)
    assert torch.equal(g(x), x) and torch.equal(g.direction("BtoA")(x), x * 0.5)
    with pytest.raises(ValueError):
        g.direction("sideways")
