"""The HTTP client behind `img2img enhance`: parallel requests, retried when the failure is the
service's (a replica that died or is being replaced), with one clear outcome per file.

Enhancement is idempotent, so connection errors and HTTP 500/502/503/504 are retried with
bounded exponential backoff and full jitter (tenacity's `wait_random_exponential`, AWS
"Exponential Backoff and Jitter"), honouring `Retry-After`; 4xx answers (the request's fault)
are never retried. Neither is the endpoint's own 504 (its time limit, marked `X-Time-Limit-S`)
nor a read timeout: the same image would take as long again, on a replica still busy with it.
The client waits longer than the endpoint's time limit (read from GET /model), so the endpoint
answers first.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tenacity

from cluster.errors import Img2ImgError
from cluster.files import make_output_dir, write_atomic
from serving.inputs import check_outputs, output_path, unique_files  # noqa: F401 (unique_files: this module's API too)

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".gif": "image/gif"}
RETRY_STATUS = {500, 502, 503, 504}
# Set on the endpoint's own 504 (its time limit, not a gateway's): retrying the same image would
# only repeat the same work, so clients do not (HTTP header names are case-insensitive).
TIME_LIMIT_HEADER = "X-Time-Limit-S"
DEFAULT_TIMEOUT_S = 900.0  # when GET /model does not say the endpoint's limit
TIMEOUT_MARGIN_S = 60.0


@dataclass
class RetryPolicy:
    """attempts: tries per request in all; backoff_s/max_wait_s: full-jitter exponential waits
    (random in [0, min(max_wait_s, backoff_s * 2**n)]); budget_s: no new try after this long."""

    attempts: int = 6
    backoff_s: float = 0.5
    max_wait_s: float = 10.0
    budget_s: float = 900.0


@dataclass
class Outcome:
    """What finally happened to one file: `output` written, or `error`; `attempts` and the
    failures that were retried (`retried`, e.g. ["500", "ConnectError"])."""

    source: Path
    output: Path | None
    error: str | None = None
    model: str = ""
    attempts: int = 1
    retried: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self) -> str:
        text = str(self.output) if self.output else f"FAILED: {self.error}"
        extra = [self.note] if self.note else []
        if self.retried:  # "retried after ConnectError x5", once, even when the error says its attempts
            counts = {label: self.retried.count(label) for label in dict.fromkeys(self.retried)}
            after = ", ".join(f"{label} x{n}" if n > 1 else label for label, n in counts.items())
            text = text.replace(f" (after {self.attempts} attempts)", "")
            extra.append(f"{self.attempts} attempts; retried after {after}")
        return f"{self.source} -> {text}" + (f" ({'; '.join(extra)})" if extra else "")


class ServiceFailure(Exception):
    """A retryable answer (5xx) or transport error; `label` names it for the per-file report."""

    def __init__(self, label: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.label, self.message, self.retry_after = label, message, retry_after


def _error_text(r: httpx.Response) -> str:
    try:
        msg = r.json().get("error") or r.text
    except (ValueError, AttributeError):
        msg = r.text
    return f"{r.status_code}: {str(msg)[:300]}"


def _wait(policy: RetryPolicy):
    jitter = tenacity.wait_random_exponential(multiplier=policy.backoff_s, max=policy.max_wait_s)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None) or 0.0
        return max(jitter(state), min(after, policy.max_wait_s))

    return wait


def post_enhance(client: httpx.Client, url: str, data: bytes, content_type: str, params: dict, headers: dict,
                 policy: RetryPolicy, retried: list[str] | None = None) -> httpx.Response:
    """POST /enhance with retries; -> the 200 response. Raises Img2ImgError for a 4xx answer,
    or once the retries are spent (naming the endpoint when it could never be reached)."""
    retried = [] if retried is None else retried

    def once() -> httpx.Response:
        try:
            r = client.post(url.rstrip("/") + "/enhance", params=params, content=data,
                            headers={"Content-Type": content_type, **headers})
        except (httpx.ReadTimeout, httpx.WriteTimeout) as e:
            raise Img2ImgError(f"no answer from {url} within {client.timeout.read:.0f} s ({type(e).__name__}); "
                               "not retried: the endpoint may still be working on it (see `img2img serve status`; "
                               "--timeout waits longer)") from None
        except httpx.TransportError as e:
            raise ServiceFailure(type(e).__name__, f"cannot reach the endpoint at {url} ({type(e).__name__}); "
                                 "is it deployed? (`img2img serve status`)") from None
        if r.status_code == 504 and TIME_LIMIT_HEADER in r.headers:
            raise Img2ImgError(_error_text(r))
        if r.status_code in RETRY_STATUS:
            after = r.headers.get("retry-after", "")
            raise ServiceFailure(str(r.status_code), _error_text(r), float(after) if after.isdigit() else None)
        if r.status_code != 200:
            raise Img2ImgError(_error_text(r))
        return r

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ServiceFailure),
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_after_delay(policy.budget_s),
        wait=_wait(policy), reraise=True,
        before_sleep=lambda state: retried.append(state.outcome.exception().label))
    try:
        return retrying(once)
    except ServiceFailure as e:
        tries = len(retried) + 1
        raise Img2ImgError(e.message + (f" (after {tries} attempts)" if tries > 1 else "")) from None


def _client(timeout: float) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0))


def client_timeout(url: str, api_key: str | None = None) -> float:
    """Seconds to wait for one answer: the endpoint's request time limit (GET /model's
    `request_timeout_s`) plus a margin, so its JSON 504 arrives before the client gives up;
    DEFAULT_TIMEOUT_S when it does not say (unreachable, or an older endpoint)."""
    try:
        r = httpx.get(url.rstrip("/") + "/model", headers=_auth(api_key), timeout=10)
        return float(r.json()["request_timeout_s"]) + TIMEOUT_MARGIN_S
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return DEFAULT_TIMEOUT_S


def enhance_bytes(url: str, data: bytes, content_type: str = "application/octet-stream", fmt: str = "png",
                  api_key: str | None = None, timeout: float | None = None, direction: str | None = None,
                  policy: RetryPolicy | None = None) -> tuple[bytes, dict]:
    """One image through POST /enhance (retried as described above) -> (output bytes, response
    headers). `timeout`: seconds per answer (default: `client_timeout`). Raises Img2ImgError (4xx,
    the endpoint's time limit, or retries spent)."""
    with _client(timeout or client_timeout(url, api_key)) as client:
        r = post_enhance(client, url, data, content_type, _params(fmt, direction), _auth(api_key),
                         policy or RetryPolicy())
    return r.content, dict(r.headers)


def _params(fmt: str, direction: str | None) -> dict:
    return {"format": fmt, **({"direction": direction} if direction else {})}


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def enhance_files(files: list[Path], out_dir: Path, url: str, fmt: str = "png", api_key: str | None = None,
                  parallel: int = 4, on_done: Callable[[Outcome], None] = lambda o: None,
                  direction: str | None = None, policy: RetryPolicy | None = None,
                  timeout: float | None = None, root: Path | None = None) -> list[Outcome]:
    """Enhance files through the endpoint, `parallel` at a time -> one Outcome per file (in
    order). Outputs are written atomically (`.part` then rename), keeping each file's folder
    relative to `root` under `out_dir` (serving.inputs.output_path). `timeout`: seconds per answer
    (default: `client_timeout`). Raises Img2ImgError before any request when two files would
    write the same output (`check_outputs`)."""
    check_outputs(files, out_dir, fmt, root)
    files = unique_files(files)
    timeout = timeout or client_timeout(url, api_key)
    make_output_dir(out_dir)
    policy = policy or RetryPolicy()

    def one(src: Path) -> Outcome:
        retried: list[str] = []
        try:
            r = post_enhance(client, url, src.read_bytes(), MEDIA.get(src.suffix.lower(), "application/octet-stream"),
                             _params(fmt, direction), _auth(api_key), policy, retried)
            dest = output_path(src, out_dir, fmt, root)
            make_output_dir(dest.parent)
            write_atomic(dest, r.content)  # never leave a half-written output
        except (Img2ImgError, OSError) as e:
            return Outcome(src, None, str(e), attempts=len(retried) + 1, retried=retried)
        frames = int(r.headers.get("x-input-frames", "1") or 1)
        return Outcome(src, dest, None, f"{r.headers.get('x-model-name')} v{r.headers.get('x-model-version')}",
                       attempts=len(retried) + 1, retried=retried,
                       note=f"first frame of {frames}" if frames > 1 else "")

    results = []
    with _client(timeout) as client, ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for outcome in pool.map(one, files):
            on_done(outcome)
            results.append(outcome)
    return results
