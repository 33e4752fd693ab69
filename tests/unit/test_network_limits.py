"""What the network does, in pure logic: tiled inference stops between passes when its caller no
longer wants the result; the upload limit is an option checked like the others; transient store
errors are retried by urllib3 and then reported as one "unavailable" line."""

from __future__ import annotations

import pytest
import torch
import urllib3
from minio.error import S3Error, ServerError

from cluster.errors import Img2ImgError


def counting_forward(calls: list):
    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x

    return forward


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_tiled_inference_stops_at_the_next_pass_once_cancelled(stop_after):
    from translator import tiling

    calls: list[int] = []
    image = torch.zeros(1, 3, 64, 96)  # 6 tiles of 32 px, one per pass
    with pytest.raises(tiling.Cancelled):
        tiling.enhance(counting_forward(calls), image, tile=32, overlap=0, batch_size=1,
                       cancelled=lambda: len(calls) >= stop_after)
    assert len(calls) == stop_after
    calls.clear()
    out = tiling.enhance(counting_forward(calls), image, tile=32, overlap=0, batch_size=1, cancelled=lambda: False)
    assert out.shape == image.shape and len(calls) == 6


class Net:
    device, name = "cpu", "fake"

    def __init__(self):
        self.passes = 0

    def run(self, batch: torch.Tensor, precise: bool) -> torch.Tensor:
        self.passes += 1
        return batch


def test_the_servers_tile_loop_stops_for_a_client_gone_and_for_its_time_limit():
    import time

    from translator import tiling
    from translator.compute import run_grouped

    net = Net()
    items = [(None, net, torch.zeros(1, 3, 8, 8), False) for _ in range(5)]
    with pytest.raises(tiling.Cancelled):
        run_grouped(items, per_pass=1, cancelled=lambda: net.passes >= 2)
    assert net.passes == 2
    with pytest.raises(TimeoutError):
        run_grouped(items, per_pass=1, deadline=time.monotonic() - 1)
    assert len(run_grouped(items, per_pass=1, cancelled=lambda: False)) == 5


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_upload_limit_must_be_a_finite_positive_number(value):
    from serving.options import DEFAULTS, ReplicaOptions

    with pytest.raises(Img2ImgError, match="--upload-timeout"):
        ReplicaOptions(upload_timeout_s=value)
    assert DEFAULTS.model_dump()["upload_timeout_s"] >= 600  # generous: slow uplinks are normal


def test_retry_policy_retries_transient_answers_with_bounded_backoff():
    from cluster.storage import BACKOFF_MAX_S, TRANSIENT_STATUS, retry_policy

    retry = retry_policy(4)
    assert set(TRANSIENT_STATUS) == {500, 502, 503, 504} and retry.status_forcelist == TRANSIENT_STATUS
    assert (retry.total, retry.connect, retry.read, retry.status) == (4, 4, 4, 4)
    assert retry.allowed_methods is None and not retry.raise_on_status and not retry.respect_retry_after_header
    for _ in range(10):  # every wait is capped, however many tries
        retry = retry.increment("GET", "/x", error=urllib3.exceptions.ProtocolError("reset")) if retry.total else retry
    assert retry.get_backoff_time() <= BACKOFF_MAX_S + 1


def storage(**kw):
    from cluster.settings import get_settings
    from cluster.storage import Storage

    return Storage(get_settings(s3_endpoint="127.0.0.1:1", s3_access_key="a", s3_secret_key="b", **kw))


class Answer:
    def __init__(self, status: int):
        self.status, self.headers, self.data = status, {}, b""


@pytest.mark.parametrize("exc, reason", [
    (ServerError("server failed with HTTP status code 503", 503), "HTTP 503"),  # a HEAD: no error document
    (S3Error(Answer(503), "SlowDown", "Please reduce your request rate.", "/b/k", "r", "h"), "HTTP 503 SlowDown"),
    (S3Error(Answer(500), "InternalError", "We encountered an internal error.", "/b/k", "r", "h"), "HTTP 500"),
])
def test_a_store_failing_transiently_on_every_try_is_one_unavailable_line(exc, reason):
    s = storage(s3_max_attempts=4)
    with pytest.raises(Img2ImgError) as e:
        with s.errors("k"):
            raise exc
    message = str(e.value)
    assert message.startswith("the object store S3 at http://127.0.0.1:1 is unavailable: " + reason), message
    assert "on all 4 tries" in message and "\n" not in message


def test_a_non_transient_server_answer_is_not_called_unavailable():
    with pytest.raises(Img2ImgError, match="answered HTTP 501"):
        with storage().errors("k"):
            raise ServerError("server failed with HTTP status code 501", 501)


def test_pyarrow_transient_failure_is_the_same_one_line_and_other_errors_pass():
    from cluster.settings import get_settings
    from cluster.storage import arrow_errors

    settings = get_settings(s3_endpoint="127.0.0.1:1", s3_max_attempts=3)
    with pytest.raises(Img2ImgError, match=r"S3 at http://127.0.0.1:1 is unavailable: SLOW_DOWN on all 3 tries"):
        with arrow_errors(settings):
            raise OSError("When reading information for key 'k' in bucket 'b': AWS Error SLOW_DOWN during "
                          "HeadObject operation: Please reduce your request rate.")
    with pytest.raises(Img2ImgError, match=r"unavailable: HTTP 503 on all 3 tries"):  # a HEAD: no error document
        with arrow_errors(settings):
            raise OSError("When getting information for key 'k' in bucket 'b': AWS Error UNKNOWN (HTTP status 503) "
                          "during HeadObject operation: No response body.")
    with pytest.raises(FileNotFoundError):
        with arrow_errors(settings):
            raise FileNotFoundError("b/k")


SLOW_DOWN = ("When reading information for key 'datasets/blur/train/0.parquet' in bucket 'img2img': AWS Error "
             "SLOW_DOWN during GetObject operation: Please reduce your request rate.")


def ray_wrapped() -> list[BaseException]:
    """pyarrow's OSError as a training or evaluation job receives it: a Ray task's error (cause
    kept), Ray Train's worker failure, and a worker's traceback passed on as text only."""
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    task = RayTaskError("ReadParquet", f"Traceback (most recent call last):\nOSError: {SLOW_DOWN}", OSError(SLOW_DOWN))
    text_only = RuntimeError(f"Worker 0 failed:\nTraceback (most recent call last):\n  ...\nOSError: {SLOW_DOWN}")
    return [task, task.as_instanceof_cause(), WorkerGroupError("training failed", {0: task}),
            ControllerError(text_only), text_only]


@pytest.mark.parametrize("index", range(5), ids=["task", "task-as-cause", "worker-group", "controller", "text"])
def test_a_throttled_store_behind_ray_s_wrapping_is_the_one_unavailable_line(index):
    from cluster.settings import get_settings
    from cluster.storage import arrow_errors, arrow_unavailable

    settings = get_settings(s3_endpoint="127.0.0.1:1", s3_max_attempts=3)
    error = ray_wrapped()[index]
    line = str(arrow_unavailable(error, settings))
    assert line == ("the object store S3 at http://127.0.0.1:1 is unavailable: SLOW_DOWN on all 3 tries "
                    "(IMG2IMG_S3_MAX_ATTEMPTS); try again later"), line
    with pytest.raises(Img2ImgError, match="is unavailable: SLOW_DOWN on all 3 tries"):
        with arrow_errors(settings):
            raise error


@pytest.mark.parametrize("error", [
    RuntimeError("Worker 0 failed: ValueError: crop size 64 exceeds the image"),
    OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),  # not transient
    FileNotFoundError("img2img/datasets/blur/train/0.parquet"),
])
def test_other_job_errors_are_not_called_a_store_outage(error):
    from cluster.settings import get_settings
    from cluster.storage import arrow_errors, arrow_unavailable

    settings = get_settings(s3_endpoint="127.0.0.1:1")
    assert arrow_unavailable(error, settings) is None
    with pytest.raises(type(error)):
        with arrow_errors(settings):
            raise error


def test_a_store_that_cannot_be_reached_names_the_failure_and_the_tries():
    reset = urllib3.exceptions.MaxRetryError(None, "/b/k", urllib3.exceptions.ProtocolError("reset"))
    with pytest.raises(Img2ImgError) as e:
        with storage(s3_max_attempts=4).errors("k"):
            raise reset
    assert str(e.value).startswith("cannot reach S3 at http://127.0.0.1:1 (ProtocolError on all 4 tries over 0 s)")
