"""The pipeline's webhook: when a pipeline run ends (a decision: promoted, champion kept, failed,
stopped) its driver POSTs a JSON summary to the URL of `notify.webhook`.

The URL is either written in the file (`https://hooks.example.com/img2img`) or named as
`env:NAME`, read from the environment variable NAME where the driver runs (the Ray cluster: a
Kubernetes Secret in production), so that a URL carrying a token (Slack, Teams) is neither in
the pipeline file nor in its MLflow record. Only the URL's host is ever logged or recorded.

Delivery: httpx, retried by tenacity on connection errors, 429 and 5xx (3 tries, exponential
backoff); a 4xx other than 429 is final. A webhook that cannot be delivered never fails the
pipeline: the outcome is recorded on the pipeline's run (`pipeline.notified`).
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit

import httpx
import tenacity

log = logging.getLogger(__name__)
ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
TRIES = 3


def check_webhook(value: str) -> str:
    """`notify.webhook` as written: an http(s) URL with a host, or `env:NAME`. -> `value`.
    Raises ValueError (a one-line reason) for anything else."""
    if ENV_REF.match(value):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s):// URL or env:NAME (the URL read from that environment variable "
                         "where the pipeline runs)")
    return value


def resolve(value: str, environ=os.environ) -> str:
    """The URL `value` names (`env:NAME` read from `environ`). Raises LookupError naming the
    variable when it is unset or not an http(s) URL."""
    m = ENV_REF.match(value)
    if not m:
        return value
    url = environ.get(m.group(1))
    if not url:
        raise LookupError(f"environment variable {m.group(1)} is not set where the pipeline runs")
    try:
        if ENV_REF.match(url):
            raise ValueError(url)
        return check_webhook(url)
    except ValueError:
        raise LookupError(f"environment variable {m.group(1)} does not hold an http(s) URL") from None


def host_of(url: str) -> str:
    """`hooks.example.com:8443`: what may be shown of a webhook URL (its path may hold a token)."""
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"


class _Redact(logging.Filter):
    """Shows only the host of the webhook URLs in httpx's own request log lines."""

    urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(u in message for u in self.urls):
            for u in self.urls:
                message = message.replace(u, f"{urlsplit(u).scheme}://{host_of(u)}/...")
            record.msg, record.args = message, ()
        return True


_REDACT = _Redact()
logging.getLogger("httpx").addFilter(_REDACT)


class _Retryable(Exception):
    """A response worth another try: 429 or 5xx."""


def send(value: str, payload: dict, timeout_s: float = 10.0, wait_s: float = 1.0) -> str:
    """POST `payload` (JSON) to the webhook `value` (URL or env:NAME). -> one line saying what
    happened (`delivered to HOST (HTTP 200)`, `not delivered to HOST: REASON`); never raises for
    a delivery failure. `wait_s`: the first backoff, doubled per try."""
    try:
        url = resolve(value)
    except LookupError as e:
        return f"not delivered: {e}"
    host = host_of(url)
    _REDACT.urls.add(url)

    def post() -> httpx.Response:
        r = httpx.post(url, json=payload, timeout=timeout_s)
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}")
        return r

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type((_Retryable, httpx.TransportError)),
                                 stop=tenacity.stop_after_attempt(TRIES),
                                 wait=tenacity.wait_exponential(multiplier=wait_s, max=30), reraise=True)
    try:
        r = retrying(post)
    except _Retryable as e:
        line = f"not delivered to {host}: {e} after {TRIES} tries"
    except httpx.HTTPError as e:
        line = f"not delivered to {host}: {type(e).__name__} after {TRIES} tries"
    else:
        line = (f"delivered to {host} (HTTP {r.status_code})" if r.is_success
                else f"not delivered to {host}: HTTP {r.status_code}")
    log.info("webhook %s", line)
    return line


def summary(name: str, job_id: str, run_id: str, status: str, outcome: str, error: str, model: str,
            outputs: dict[str, dict]) -> dict:
    """The JSON a webhook receives: {"pipeline", "id" (the Ray job), "run_id" (MLflow), "status"
    (FINISHED | FAILED | KILLED), "decision" (promote | keep | "" when the gate did not run),
    "outcome" (the line `pipeline status` shows), "error", "model", "candidate", "champion",
    "steps": {step: its outputs}}."""
    gate = outputs.get("gate", {})
    promote = outputs.get("promote", {})
    candidate = gate.get("candidate") or outputs.get("train", {}).get("version", "")
    return {"pipeline": name, "id": job_id, "run_id": run_id, "status": status, "decision": gate.get("decision", ""),
            "outcome": outcome, "error": error, "model": model, "candidate": candidate,
            "champion": promote.get("champion") or gate.get("champion", ""),
            "steps": {step: {k: v for k, v in out.items() if k != "key"} for step, out in outputs.items()}}
