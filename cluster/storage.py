"""Object-store access through the MinIO SDK (works against MinIO, SeaweedFS or any S3).

Every failure a user can cause (wrong keys, unreachable endpoint, missing bucket) becomes one
`Img2ImgError` line naming the endpoint, never the secret.

Transient failures of the store (HTTP 500/502/503/504, S3's `SlowDown`, refused or reset
connections) are retried with exponential backoff by the HTTP layer itself: urllib3's `Retry`
under the MinIO SDK (`retry_policy`), the AWS SDK's standard retry strategy under pyarrow
(`arrow_filesystem`, read by Ray Data and Ray Train), and boto3's standard mode in the MLflow
server (`mlflow_server_env`). `IMG2IMG_S3_MAX_ATTEMPTS` tries in all; once they are spent the
store is reported unavailable in one line (docs/object-store.md).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings

AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken"}


class Conflict(Img2ImgError):
    """A conditional write lost (HTTP 412): the object appeared, or changed, since it was read."""


# What a store answers when it is busy or briefly down: worth another try, never the caller's fault.
TRANSIENT_STATUS = (500, 502, 503, 504)
TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                   "ThrottlingException", "RequestLimitExceeded"}
# Exponential backoff between tries (urllib3: 0, then factor * 2^(n-1) s, capped, plus up to
# BACKOFF_JITTER_S at random so clients throttled together do not come back together):
# 5 tries wait about 0 + 1 + 2 + 4 = 7 s before the store is called unavailable.
BACKOFF_FACTOR_S, BACKOFF_MAX_S, BACKOFF_JITTER_S = 0.5, 8.0, 0.25


def retry_policy(retries: int) -> urllib3.Retry:
    """urllib3's retry for every MinIO SDK request: up to `retries` more tries after the first
    on a refused/reset connection or an HTTP 500/502/503/504 answer (S3 `SlowDown` is a 503),
    for every method (S3 requests are idempotent: a PUT writes the same bytes to the same key),
    with exponential backoff. `Retry-After` is not followed: a store asking for an hour would
    otherwise hold a command that long. Once spent, the last answer is handed to the SDK, which
    raises it (`Storage.errors` turns it into one line)."""
    return urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                         status_forcelist=TRANSIENT_STATUS, allowed_methods=None, raise_on_status=False,
                         respect_retry_after_header=False, backoff_factor=BACKOFF_FACTOR_S,
                         backoff_max=BACKOFF_MAX_S, backoff_jitter=BACKOFF_JITTER_S)


def unavailable(endpoint: str, answer: str, attempts: int, seconds: float | None) -> Img2ImgError:
    """The one line for a store that kept failing: `answer` (its last answer, e.g. "HTTP 503 SlowDown")
    on all `attempts` tries over `seconds` (None: not timed, e.g. tries made inside the AWS SDK)."""
    over = f" over {seconds:.0f} s" if seconds is not None else ""
    return Img2ImgError(f"the object store S3 at {endpoint} is unavailable: {answer.strip()} on all {attempts} "
                        f"tries{over} (IMG2IMG_S3_MAX_ATTEMPTS); try again later")


def mlflow_server_env(max_attempts: int) -> dict[str, str]:
    """Environment for the MLflow server, which proxies artifacts to the store through boto3:
    boto3's `standard` retry mode (transient errors, throttling, exponential backoff with
    jitter) with `max_attempts` tries in all."""
    return {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": str(max_attempts)}


@dataclass
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None
    etag: str = ""  # the store's content tag ("" when it gave none)


class Storage:
    def __init__(self, settings: Settings | None = None, bucket: str | None = None, retries: int | None = None):
        """`retries`: tries after the first (None: `IMG2IMG_S3_MAX_ATTEMPTS` in all; 0 for a
        health probe that must answer at once)."""
        self.settings = settings or get_settings()
        self.bucket = bucket or self.settings.bucket
        self.endpoint = self.settings.s3_url
        try:  # the SDK raises a bare ValueError on the first call otherwise (a traceback)
            check_bucket_name(self.bucket)
        except ValueError:
            raise Img2ImgError(f"{self.bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase "
                               "letters, digits, dots and hyphens)") from None
        keys = self.settings.s3_keys()
        if keys is None:
            raise Img2ImgError(
                f"no S3 credentials for {self.endpoint}: set IMG2IMG_S3_ACCESS_KEY and "
                "IMG2IMG_S3_SECRET_KEY, or run `img2img stack up` to create the local store")
        self.attempts = 1 + (self.settings.s3_max_attempts - 1 if retries is None else retries)
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=120),
                                   retries=retry_policy(self.attempts - 1))
        self.client = Minio(self.settings.s3_hostport, access_key=keys[0], secret_key=keys[1],
                            secure=self.settings.s3_is_secure, region=self.settings.s3_region,
                            http_client=http)

    @contextlib.contextmanager
    def errors(self, what: str = "") -> Iterator[None]:
        """Translate SDK/network failures into one readable line."""
        start = time.monotonic()
        try:
            yield
        except S3Error as e:
            if e.code in TRANSIENT_CODES or (e.response is not None and e.response.status in TRANSIENT_STATUS):
                status = f"HTTP {e.response.status} " if e.response is not None else ""
                raise self._unavailable(f"{status}{e.code}", start) from None
            if e.code in AUTH_CODES:
                raise Img2ImgError(f"S3 at {self.endpoint} refused the credentials ({e.code}): "
                                   "check IMG2IMG_S3_ACCESS_KEY / IMG2IMG_S3_SECRET_KEY") from None
            if e.code == "NoSuchBucket":
                raise Img2ImgError(self._no_bucket()) from None
            if e.code == "NoSuchKey":
                raise Img2ImgError(f"{what or 'object'} not found in s3://{self.bucket} at {self.endpoint}") from None
            raise Img2ImgError(f"S3 at {self.endpoint}: {e.code}: {e.message}") from None
        except (ServerError, InvalidResponseError) as e:  # an answer without an S3 error document
            status = getattr(e, "_code", None) or getattr(e, "status_code", None)
            if status in TRANSIENT_STATUS:
                raise self._unavailable(f"HTTP {status}", start) from None
            raise Img2ImgError(f"S3 at {self.endpoint} answered HTTP {status}: not an S3 service?") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if isinstance(e, Img2ImgError):
                raise
            why = type(getattr(e, "reason", None) or e).__name__  # MaxRetryError wraps the last failure
            tries = f" on all {self.attempts} tries over {time.monotonic() - start:.0f} s" if self.attempts > 1 else ""
            raise Img2ImgError(f"cannot reach S3 at {self.endpoint} ({why}{tries}); "
                               "is it running? (`img2img stack up` starts the local one)") from None

    def _unavailable(self, answer: str, start: float) -> Img2ImgError:
        return unavailable(self.endpoint, answer, self.attempts, time.monotonic() - start)

    # ---- buckets --------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Get-or-create the bucket; safe when several clients create it at once (the losers'
        "already exists" is the answer they wanted)."""
        with self.errors():
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as e:
                # Ours already (another client of these keys won the race): done, even while the
                # winner's create is still settling and bucket_exists says no. Any other refusal
                # (a server's own conflict code, a busy moment) is fine when the bucket is there now.
                if e.code == "BucketAlreadyOwnedByYou" or self.client.bucket_exists(self.bucket):
                    return
                raise

    def check(self) -> None:
        """Raise unless the endpoint answers, accepts the keys and has the bucket."""
        with self.errors():
            exists = self.client.bucket_exists(self.bucket)
        if not exists:
            raise Img2ImgError(self._no_bucket())

    def _no_bucket(self) -> str:
        if self.bucket != self.settings.bucket:  # a source bucket the user named: stack up won't make it
            return f"bucket {self.bucket!r} does not exist at {self.endpoint}; check the bucket name"
        return (f"bucket {self.bucket!r} (IMG2IMG_BUCKET) does not exist at {self.endpoint}; "
                "`img2img stack up` creates it on the local store, create it yourself on another one")

    # ---- objects ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        """One PUT: readers see the whole object or none of it. `metadata`: user metadata
        (`x-amz-meta-*`, ASCII), read back by `metadata`."""
        with self.errors(key):
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type,
                                   metadata=metadata)

    def metadata(self, key: str) -> dict[str, str] | None:
        """The user metadata of `key` (names lower-case, without `x-amz-meta-`), or None when
        there is no such object."""
        try:
            with self.errors(key):
                stat = self.client.stat_object(self.bucket, key)
        except Img2ImgError as e:
            if "not found" in str(e):
                return None
            raise
        prefix = "x-amz-meta-"
        return {k.lower()[len(prefix):]: v for k, v in (stat.metadata or {}).items() if k.lower().startswith(prefix)}

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "application/json") -> str:
        """Write `key` only if it is still as it was read: absent (`etag` None) or unchanged (its
        ETag is still `etag`), in one request the store decides atomically (S3 conditional writes:
        `If-None-Match: *` / `If-Match`; MinIO, SeaweedFS and AWS S3 support them). -> the new ETag.
        Raises Conflict when another client wrote it first."""
        cond = {"If-None-Match": "*"} if etag is None else {"If-Match": f'"{etag}"'}
        with self.errors(key):
            try:  # minio-py's put_object would turn these headers into user metadata (x-amz-meta-*)
                result = self.client._put_object(self.bucket, key, data, headers={"Content-Type": content_type, **cond})
            except S3Error as e:
                if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise Conflict(f"s3://{self.bucket}/{key} was written by another client meanwhile") from None
                raise
        return result.etag

    def get_bytes(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_head(self, key: str, length: int) -> bytes:
        """The first `length` bytes of `key` (all of it when shorter): one ranged GET."""
        with self.errors(key):
            resp = self.client.get_object(self.bucket, key, offset=0, length=length)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """-> (the object's bytes, the ETag of exactly those bytes, for `put_if`)."""
        with self.errors(key):
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read(), resp.headers.get("ETag", "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

    def exists(self, key: str) -> bool:
        try:
            with self.errors(key):
                self.client.stat_object(self.bucket, key)
            return True
        except Img2ImgError as e:
            if "not found" in str(e):
                return False
            raise

    def list(self, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        with self.errors(prefix):
            return [ObjectInfo(o.object_name, o.size or 0, o.last_modified, (o.etag or "").strip('"'))
                    for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)]

    def delete(self, key: str) -> None:
        with self.errors(key):
            self.client.remove_object(self.bucket, key)

    def delete_keys(self, keys: list[str], where: str = "") -> int:
        """Delete these objects in batches (missing ones are fine). -> how many were asked for.
        Raises Img2ImgError when the store refuses any (`where` names them in the message)."""
        if not keys:
            return 0
        with self.errors(where or keys[0]):
            errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise Img2ImgError(f"could not delete {len(errors)} objects under {where or keys[0]}")
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        return self.delete_keys([o.key for o in self.list(prefix)], prefix)


def arrow_filesystem(settings: Settings | None = None):
    """A pyarrow S3FileSystem on the same endpoint and keys (for Ray Data / Ray Train).

    pyarrow ignores AWS_ENDPOINT_URL, so the endpoint is passed explicitly; paths given to it
    are `bucket/key`, without `s3://`. Transient errors (5xx, SlowDown, resets) are retried by
    the AWS SDK's standard strategy, `IMG2IMG_S3_MAX_ATTEMPTS` tries in all; after them pyarrow
    raises OSError ("AWS Error SLOW_DOWN ..."; `arrow_errors` makes it one line).
    """
    from pyarrow import fs

    settings = settings or get_settings()
    keys = settings.s3_keys()
    if keys is None:
        raise Img2ImgError(f"no S3 credentials for {settings.s3_url}")
    return fs.S3FileSystem(endpoint_override=settings.s3_hostport,
                           scheme="https" if settings.s3_is_secure else "http",
                           access_key=keys[0], secret_key=keys[1], region=settings.s3_region,
                           connect_timeout=5, request_timeout=60,
                           retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=settings.s3_max_attempts))


# pyarrow's words for a store that failed transiently on every try: the AWS SDK's error name
# ("AWS Error SLOW_DOWN") or, for an answer without an error document (a HEAD), the status.
ARROW_TRANSIENT = {"SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "THROTTLING", "NETWORK_CONNECTION",
                   "REQUEST_TIMEOUT"}


def _chain(e: BaseException, limit: int = 32) -> Iterator[BaseException]:
    """`e` and the errors it wraps: causes, contexts, and what Ray attaches (a RayTaskError's
    `cause`, Ray Train's `worker_failures` and `controller_failure`)."""
    todo, seen = [e], set()
    while todo and len(seen) < limit:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        failures = getattr(x, "worker_failures", None)
        more = [x.__cause__, x.__context__, getattr(x, "cause", None), getattr(x, "controller_failure", None),
                *(failures.values() if isinstance(failures, dict) else ())]
        todo += [m for m in more if isinstance(m, BaseException)]


def arrow_unavailable(e: BaseException, settings: Settings | None = None) -> Img2ImgError | None:
    """The one "unavailable" line (as `Storage.errors` gives it) when `e` is, or wraps, pyarrow's
    OSError for a store that failed transiently on every try: "AWS Error SLOW_DOWN ...", or
    "AWS Error UNKNOWN (HTTP status 503)" for an answer without an error document (a HEAD).
    Ray Data and Ray Train hand such an error on wrapped (RayTaskError, TrainingFailedError),
    often with the original only as text in a traceback, so the messages are searched. None for
    any other error."""
    for x in _chain(e):
        text = str(x)
        name = re.search(r"AWS Error (\w+)", text)
        if not name:
            continue
        status = re.search(r"HTTP (?:status|response code):? (\d{3})", text)
        name, status = name.group(1), status and int(status.group(1))
        if name not in ARROW_TRANSIENT and status not in TRANSIENT_STATUS:
            continue
        settings = settings or get_settings()
        answer = " ".join(part for part in (status and f"HTTP {status}", name != "UNKNOWN" and name) if part)
        return unavailable(settings.s3_url, answer, settings.s3_max_attempts, None)
    return None


@contextlib.contextmanager
def arrow_errors(settings: Settings | None = None) -> Iterator[None]:
    """Raise `arrow_unavailable`'s one line for an error (pyarrow's OSError, or Ray's wrapping of
    it) of a store that failed transiently on every try (`arrow_filesystem` retried it already);
    other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        if isinstance(e, Img2ImgError) or (err := arrow_unavailable(e, settings)) is None:
            raise
        raise err from None
