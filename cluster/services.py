"""Bounded calls to the services (MLflow, the S3 store, Ray, the endpoint): probe before the
slow client libraries get a chance to retry for minutes, and say which service at which URL
could not be reached, within seconds."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from cluster.errors import Img2ImgError
from cluster.settings import Settings

T = TypeVar("T")
PROBE_TIMEOUT_S = 3.0
# MLflow's own HTTP client retries 7 times with backoff factor 2 and a 120 s timeout (minutes
# against a stopped server); interactive commands use these bounds unless the user set others.
MLFLOW_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def bound_mlflow_calls() -> None:
    """Cap MLflow client retries/timeouts for this process (values already set are kept)."""
    for key, value in MLFLOW_BOUNDS.items():
        os.environ.setdefault(key, value)


def poll_until(check: Callable[[], T], timeout_s: float, interval_s: float = 0.5) -> T | None:
    """Call `check()` every `interval_s` seconds until it returns something truthy (returned) or
    `timeout_s` seconds have passed (-> None; `check` runs at least once). An exception from
    `check` propagates at once: that is how a caller gives up early (e.g. a failed deployment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() + interval_s > deadline:
            return None
        time.sleep(interval_s)


def http_status(url: str, headers: dict | None = None, timeout: float = PROBE_TIMEOUT_S) -> int | None:
    """Status code of a GET of `url`, or None when nothing answers within `timeout` seconds."""
    try:
        return httpx.get(url, headers=headers or {}, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def reachable(url: str, headers: dict | None = None, timeout: float = PROBE_TIMEOUT_S, tries: int = 2) -> bool:
    """True when something answers HTTP at `url` (any status below 500), within `tries` x `timeout`."""
    for _ in range(max(1, tries)):
        status = http_status(url, headers, timeout)
        if status is not None:
            return status < 500
    return False


def require(name: str, base_url: str, path: str = "", headers: dict | None = None,
            hint: str = "is it running? (`img2img stack up`)") -> None:
    """Raise Img2ImgError("cannot reach NAME at URL; HINT") unless `base_url + path` answers."""
    if not reachable(base_url.rstrip("/") + path, headers):
        raise Img2ImgError(f"cannot reach {name} at {base_url}; {hint}")


def require_mlflow(settings: Settings) -> None:
    require("MLflow", settings.mlflow_uri, "/health")


def require_ray(settings: Settings) -> None:
    require("the Ray dashboard", settings.ray_address, "/api/version", settings.ray_auth_headers())


def job_client(settings: Settings):
    """A Ray JobSubmissionClient for the configured cluster, with Ray's auth token found for you.
    Raises Img2ImgError when the Ray Jobs API does not answer or refuses the connection."""
    from ray.job_submission import JobSubmissionClient

    settings.apply_ray_env()
    for chatty in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",  # upload, websocket
                   "ray._private.runtime_env.packaging"):  # "Creating a file package for local module"
        logging.getLogger(chatty).setLevel(logging.WARNING)
    require("the Ray Jobs API", settings.ray_address, "/api/version", settings.ray_auth_headers())
    try:
        # the token as a header of our own: Ray's token loader caches the first token a process
        # reads, so a second cluster's client in the same process would send the first's
        return JobSubmissionClient(settings.ray_address, headers=settings.ray_auth_headers() or None)
    except Exception as e:
        raise Img2ImgError(f"Ray at {settings.ray_address} refused the connection: {str(e).splitlines()[0]}") from None


def require_endpoint(url: str) -> None:
    require("the endpoint", url, "/-/healthz", hint="is it deployed? (`img2img serve status`)")


def cluster_resources(settings: Settings) -> dict[str, float]:
    """Total resources of the cluster's live nodes, from the dashboard: {"CPU": 4.0, ...}
    ({} when the dashboard does not answer; callers then skip checks that need it)."""
    try:
        r = httpx.get(settings.ray_address.rstrip("/") + "/nodes", params={"view": "summary"},
                      headers=settings.ray_auth_headers(), timeout=10)
        nodes = r.json()["data"]["summary"]
    except Exception:
        return {}
    total: dict[str, float] = {}
    for node in nodes:
        raylet = node.get("raylet") or {}
        if raylet.get("state") == "ALIVE":
            for k, v in (raylet.get("resourcesTotal") or {}).items():
                total[k] = total.get(k, 0.0) + float(v)
    return total


def driver_args(description: str, argv: list[str] | None = None, level: int = logging.INFO) -> tuple[str, float | None]:
    """A job driver's `--spec JSON [--queue-deadline EPOCH_S]` -> (spec JSON, deadline or None)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="the job's spec as JSON")
    parser.add_argument("--queue-deadline", type=float, default=None, help="epoch seconds: not started after it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.spec, args.queue_deadline
