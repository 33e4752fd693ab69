"""The HTTP client behind `img2img enhance`: parallel requests, retried when the failure is the
service's (a replica that died or is being replaced), with one clear outcome per file.

Enhancement is idempotent, so connection errors and HTTP 500/502/503/504 are retried with
bounded exponential backoff and full jitter (tenacity's `wait_random_exponential`, AWS
"Exponential Backoff and Jitter"), honouring `Retry-After`; 4xx answers (the request's fault)
are never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tenacity

from cluster.errors import Img2ImgError
from cluster.files import write_atomic

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".gif": "image/gif"}
RETRY_STATUS = {500, 502, 503, 504}
EXTENSIONS = {"jpeg": "jpg", "tif": "tiff"}


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
        if self.retried:
            extra.append(f"{self.attempts} attempts; retried after {', '.join(self.retried)}")
        return f"{self.source} -> {text}" + (f" ({'; '.join(extra)})" if extra else "")


class ServiceFailure(Exception):
    """A retryable answer (5xx) or transport error; `label` names it for the per-file report."""

    def __init__(self, label: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.label, self.message, self.retry_after = label, message, retry_after


def output_path(src: Path, out_dir: Path, fmt: str) -> Path:
    return out_dir / f"{src.stem}.enhanced.{EXTENSIONS.get(fmt, fmt)}"


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
        except httpx.TransportError as e:
            raise ServiceFailure(type(e).__name__, f"cannot reach the endpoint at {url} ({type(e).__name__}); "
                                 "is it deployed? (`img2img serve status`)") from None
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


def enhance_bytes(url: str, data: bytes, content_type: str = "application/octet-stream", fmt: str = "png",
                  api_key: str | None = None, timeout: float = 300, direction: str | None = None,
                  policy: RetryPolicy | None = None) -> tuple[bytes, dict]:
    """One image through POST /enhance (retried as described above) -> (output bytes, response
    headers). Raises Img2ImgError (4xx, or retries spent)."""
    with _client(timeout) as client:
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
                  timeout: float = 300) -> list[Outcome]:
    """Enhance files through the endpoint, `parallel` at a time -> one Outcome per file (in
    order). Outputs are written atomically (`.part` then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = policy or RetryPolicy()

    def one(src: Path) -> Outcome:
        retried: list[str] = []
        try:
            r = post_enhance(client, url, src.read_bytes(), MEDIA.get(src.suffix.lower(), "application/octet-stream"),
                             _params(fmt, direction), _auth(api_key), policy, retried)
            dest = output_path(src, out_dir, fmt)
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
