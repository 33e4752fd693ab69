"""Bounded calls to the services (MLflow, the S3 store, Ray, the endpoint): probe before the
slow client libraries get a chance to retry for minutes, and say which service at which URL
could not be reached, within seconds."""

from __future__ import annotations

import os

import httpx

from cluster.errors import Img2ImgError
from cluster.settings import Settings

PROBE_TIMEOUT_S = 3.0
# MLflow's own HTTP client retries 7 times with backoff factor 2 and a 120 s timeout (minutes
# against a stopped server); interactive commands use these bounds unless the user set others.
MLFLOW_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def bound_mlflow_calls() -> None:
    """Cap MLflow client retries/timeouts for this process (values already set are kept)."""
    for key, value in MLFLOW_BOUNDS.items():
        os.environ.setdefault(key, value)


def reachable(url: str, headers: dict | None = None, timeout: float = PROBE_TIMEOUT_S, tries: int = 2) -> bool:
    """True when something answers HTTP at `url` (any status below 500), within `tries` x `timeout`."""
    for _ in range(max(1, tries)):
        try:
            return httpx.get(url, headers=headers or {}, timeout=timeout).status_code < 500
        except httpx.HTTPError:
            continue
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


def require_endpoint(url: str) -> None:
    require("the endpoint", url, "/-/healthz", hint="is it deployed? (`img2img serve status`)")
