"""A throttling object store is retried on every client path: a forwarding proxy on 127.0.0.1
in front of the stack's SeaweedFS answers every other request `503 SlowDown` (what S3 and MinIO
send when busy), and `data verify` / `ls` / `ingest` (MinIO SDK), a pyarrow read as Ray Data and
Ray Train do it, and boto3 as the MLflow server runs it all succeed; a proxy answering 503 always
gives the one-line "unavailable" error within the retry budget, in the CLI and as the reason of a
training or evaluation job that streams its shards through it."""

from __future__ import annotations

import http.client
import http.server
import threading
import time

import pyarrow.parquet as pq
import pytest

from cluster.errors import Img2ImgError

pytestmark = pytest.mark.integration
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class ThrottlingProxy:
    """Forwards HTTP to `upstream` (host:port) with the client's headers unchanged (so SigV4
    signatures still verify), answering `503 SlowDown` instead to every other request
    (`always=False`, starting with the first) or to all (`always=True`); with `only`, to the
    requests for keys ending in it alone (".parquet": the dataset shards), the rest forwarded."""

    def __init__(self, upstream: str, always: bool = False, only: str | None = None):
        self.upstream, self.always, self.only = upstream, always, only
        self.seen = self.throttled = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chosen = not proxy.only or self.path.split("?")[0].endswith(proxy.only)
                with proxy.lock:
                    proxy.seen += chosen
                    throttle = chosen and (proxy.always or proxy.seen % 2 == 1)
                    proxy.throttled += throttle
                if throttle:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # keeps the upstream's Content-Length: the object's size
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.hostport = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttled(stack, monkeypatch):
    """A proxy that throttles every other request, set as the store of this process's settings."""
    with ThrottlingProxy(stack.s3_hostport) as proxy:
        monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", proxy.hostport)
        yield proxy


def test_minio_sdk_paths_survive_a_store_that_throttles_every_other_request(throttled, blur_dataset, cli,
                                                                            tmp_path):
    from PIL import Image

    r = cli("data", "verify", blur_dataset)
    assert r.exit_code == 0 and "verified" in r.output, r.output
    r = cli("data", "ls")
    assert r.exit_code == 0 and blur_dataset in r.output, r.output
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(tmp_path / f"{i}.png")
    r = cli("data", "ingest", tmp_path, "--name", "throttled", "--size", "32", "--val-fraction", "0.34")
    assert r.exit_code == 0, r.output
    r = cli("data", "verify", "throttled")
    assert r.exit_code == 0, r.output
    assert throttled.throttled >= 10  # the store really did refuse half of what it was asked


def test_pyarrow_read_as_ray_data_does_survives_throttling(throttled, blur_dataset):
    from cluster.settings import get_settings
    from cluster.storage import Storage, arrow_filesystem
    from registry.manifest import dataset_prefix, read_manifest

    settings = get_settings()
    manifest = read_manifest(Storage(settings), blur_dataset)
    shard = manifest.splits["train"][0]
    before = throttled.throttled
    table = pq.read_table(f"{settings.bucket}/{dataset_prefix(blur_dataset)}{shard.path}",
                          filesystem=arrow_filesystem(settings))
    assert table.num_rows == shard.rows and throttled.throttled > before


def test_boto3_as_the_mlflow_server_runs_it_survives_throttling(stack, throttled, monkeypatch):
    """The MLflow server proxies artifacts through boto3 with the environment the stack gives it."""
    import boto3
    import psutil

    from cluster.stack import Stack
    from cluster.storage import mlflow_server_env

    env = mlflow_server_env(stack.s3_max_attempts)
    server_env = psutil.Process(Stack(stack)._load()["pids"]["mlflow"]).environ()
    assert {k: server_env.get(k) for k in env} == env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    access, secret = stack.s3_keys()
    s3 = boto3.client("s3", endpoint_url=f"http://{throttled.hostport}", aws_access_key_id=access,
                      aws_secret_access_key=secret, region_name=stack.s3_region)
    s3.put_object(Bucket=stack.bucket, Key="retry-check/a.txt", Body=b"kept")
    assert s3.get_object(Bucket=stack.bucket, Key="retry-check/a.txt")["Body"].read() == b"kept"
    assert throttled.throttled >= 2


def test_a_store_that_always_throttles_is_reported_unavailable_in_one_line(stack, blur_dataset, cli, monkeypatch):
    from cluster.settings import get_settings
    from cluster.storage import arrow_errors, arrow_filesystem

    monkeypatch.setenv("IMG2IMG_S3_MAX_ATTEMPTS", "3")
    with ThrottlingProxy(stack.s3_hostport, always=True) as proxy:
        monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", proxy.hostport)
        t0 = time.monotonic()
        r = cli("data", "verify", blur_dataset)
        took = time.monotonic() - t0
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert lines[0].startswith(f"Error: the object store S3 at http://{proxy.hostport} is unavailable: "
                                   "HTTP 503"), r.output  # + "SlowDown" where the answer had a body
        assert "on all 3 tries" in lines[0], r.output
        assert proxy.seen == 3 and took < 30  # 3 tries and their backoff (~1 s), not an endless loop
        r = cli("data", "ls")  # a GET: the store's error document names the reason
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert "is unavailable: HTTP 503 SlowDown on all 3 tries" in r.output, r.output

        settings = get_settings()
        with pytest.raises(Img2ImgError, match=f"S3 at http://{proxy.hostport} is unavailable: HTTP 503 on all 3"):
            with arrow_errors(settings):
                pq.read_table(f"{settings.bucket}/datasets/{blur_dataset}", filesystem=arrow_filesystem(settings))


def test_a_job_streaming_shards_from_a_store_that_stays_throttled_fails_naming_the_store(stack, blur_dataset, cli,
                                                                                        monkeypatch):
    """Every read of a dataset shard answered `503 SlowDown` (the manifest and listings pass, so
    both jobs are submitted): the evaluation and the training job end FAILED, and `eval`,
    `train --follow` and `jobs status` say so in one line naming the store, not with pyarrow's
    traceback."""
    import re

    from tests.integration.conftest import register_tiny_autoencoder

    version = register_tiny_autoencoder(stack, "test-throttled", seed=7)
    monkeypatch.setenv("IMG2IMG_S3_MAX_ATTEMPTS", "2")  # the jobs get the client's store settings
    with ThrottlingProxy(stack.s3_hostport, always=True, only=".parquet") as proxy:
        monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", proxy.hostport)
        reason = f"the object store S3 at http://{proxy.hostport} is unavailable: "

        r = cli("eval", f"test-throttled/{version}", "--dataset", blur_dataset, "--limit", "2")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: " + reason), r.output
        assert "on all 2 tries" in lines[0] and proxy.throttled >= 2, r.output

        r = cli("train", "--dataset", blur_dataset, "--variant", "autoencoder", "--workers", "1",
                "--image-size", "32", "--max-steps", "1", "--model-name", "test-throttled-train", "--follow")
        job_id = re.search(r"Submitted job (raysubmit_\w+)", r.output)[1]
        last = r.output.strip().splitlines()[-1]
        assert r.exit_code == 1 and last.startswith(f"Error: job {job_id} FAILED: {reason}"), r.output
        assert "on all 2 tries" in last and "Traceback" not in r.output, r.output
    r = cli("jobs", "status", job_id)
    assert r.exit_code == 0 and re.search(r"status: FAILED", r.output), r.output
    assert re.search(r"error: " + re.escape(reason) + r".* on all 2 tries", r.output), r.output
