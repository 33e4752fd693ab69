"""Deploying the `enhancer` app through the Ray dashboard's Serve REST API (what `serve deploy`
does), so it works the same against the local head and a remote cluster."""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlparse

import httpx

from cluster.errors import Img2ImgError
from cluster.settings import Settings

APP_NAME, DEPLOYMENT = "enhancer", "Enhancer"


def _api(settings: Settings) -> str:
    return settings.ray_address.rstrip("/") + "/api/serve/applications/"


def _request(settings: Settings, method: str, **kwargs) -> dict:
    try:
        resp = httpx.request(method, _api(settings), headers=settings.ray_auth_headers(), timeout=30, **kwargs)
    except httpx.HTTPError:
        raise Img2ImgError(f"cannot reach the Ray dashboard at {settings.ray_address}; is it running? "
                           "(`img2img stack up`)") from None
    if resp.status_code in (401, 403):
        raise Img2ImgError(f"Ray at {settings.ray_address} refused the auth token ({resp.status_code})")
    if resp.status_code >= 400:
        raise Img2ImgError(f"Ray Serve API answered {resp.status_code}: {resp.text[:300]}")
    return resp.json() if resp.content else {}


def _put(settings: Settings, apps: list[dict]) -> None:
    """Declare the cluster's Serve apps (the API replaces them all, so callers pass every app)."""
    url = urlparse(settings.serve_url)
    _request(settings, "PUT", json={"http_options": {"host": url.hostname, "port": url.port or 80},
                                    "applications": apps})


def _other_apps(settings: Settings) -> list[dict]:
    state = _request(settings, "GET")
    apps = []
    for name, app in (state.get("applications") or {}).items():
        if name != APP_NAME and app.get("deployed_app_config"):
            apps.append(app["deployed_app_config"])
    return apps


def deploy(settings: Settings, model: str = "", *, min_replicas: int = 1, max_replicas: int = 2,
           target_ongoing_requests: float = 2.0, max_batch_size: int = 1, batch_wait_ms: float = 10,
           num_cpus: float = 0.5, tile: int = 512, overlap: int = 32, max_pixels: int = 16_000_000,
           upscale_delay_s: float = 5, downscale_delay_s: float = 30, wait_s: float = 300,
           runtime: str = "auto", threads: int | None = None, memory_format: str = "channels_last",
           precision: str = "auto") -> dict:
    """Deploy the enhancer app serving `model`. `runtime` auto (onnx on CPU, torch on GPU) | torch | onnx; `threads` per replica
    (default: floor(num_cpus), at least 1); `memory_format` and `precision` apply to torch."""
    from serving.model import resolve
    from serving.runtime import MEMORY_FORMATS, PRECISIONS, RUNTIMES, threads_for

    if not model:
        raise Img2ImgError("give --model NAME@champion (or NAME/VERSION)")
    if not 1 <= min_replicas <= max_replicas:
        raise Img2ImgError("need 1 <= --min-replicas <= --max-replicas")
    for option, value, allowed in (("--runtime", runtime, RUNTIMES), ("--memory-format", memory_format, MEMORY_FORMATS),
                                   ("--precision", precision, PRECISIONS)):
        if value not in allowed:
            raise Img2ImgError(f"{option} must be {' or '.join(allowed)}, got {value!r}")
    if num_cpus <= 0 or (threads is not None and threads < 1):
        raise Img2ImgError("--num-cpus must be > 0 and --threads >= 1")
    name, version = resolve(settings.mlflow_uri, model)
    user_config = {"model_name": name, "model_version": version, "tracking_uri": settings.mlflow_uri,
                   "tile": tile, "overlap": overlap, "max_pixels": max_pixels, "max_batch_size": max_batch_size,
                   "batch_wait_timeout_s": batch_wait_ms / 1000.0, "runtime": runtime,
                   "threads": threads or threads_for(num_cpus), "memory_format": memory_format,
                   "precision": precision}
    if settings.serve_api_key:  # only a hash travels; the key itself never leaves the client
        user_config["api_key_sha256"] = hashlib.sha256(settings.serve_api_key.get_secret_value().encode()).hexdigest()
    autoscaling = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                   "target_ongoing_requests": target_ongoing_requests, "upscale_delay_s": upscale_delay_s,
                   "downscale_delay_s": downscale_delay_s}
    app = {"name": APP_NAME, "route_prefix": "/", "import_path": "serving.app:app",
           "deployments": [{"name": DEPLOYMENT, "user_config": user_config, "autoscaling_config": autoscaling,
                            "max_ongoing_requests": max(16, max_batch_size * 2),
                            "ray_actor_options": {"num_cpus": num_cpus}}]}
    _put(settings, [*_other_apps(settings), app])
    if wait_s:
        wait_for_model(settings, name, version, wait_s, config_id(user_config))
    return {"model": name, "version": version, "url": settings.serve_url, "autoscaling": autoscaling,
            "runtime": runtime, "threads": user_config["threads"]}


def config_id(user_config: dict) -> str:
    """Same digest the replica reports in GET /model once it has applied this config."""
    return hashlib.sha256(json.dumps(user_config, sort_keys=True).encode()).hexdigest()[:16]


def wait_for_model(settings: Settings, name: str, version: str, timeout: float, cid: str | None = None) -> None:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        try:
            r = httpx.get(settings.serve_url.rstrip("/") + "/model", timeout=5)
            info = r.json() if r.status_code == 200 else {}
            if (info.get("version") == str(version) and info.get("name") == name
                    and (cid is None or info.get("config_id") == cid)):
                return
            last = r.text[:200]
        except httpx.HTTPError as e:
            last = type(e).__name__
        state = (status(settings) or {}).get("status")
        if state in ("DEPLOY_FAILED",):
            raise Img2ImgError(f"Serve app failed to deploy: {status(settings).get('message', '')[:300]}")
        time.sleep(1)
    raise Img2ImgError(f"the endpoint did not serve {name} v{version} within {timeout:.0f}s (last: {last})")


def redeploy_model(settings: Settings, model: str, wait_s: float = 300) -> dict:
    """Swap the served model, keeping the running app's other options (user_config update)."""
    st = status(settings)
    if not st:
        raise Img2ImgError("no enhancer app is deployed; deploy one with: img2img serve deploy --model NAME@champion")
    from serving.model import resolve

    name, version = resolve(settings.mlflow_uri, model)
    state = _request(settings, "GET")
    apps = []
    for app_name, app in (state.get("applications") or {}).items():
        cfg = app.get("deployed_app_config")
        if not cfg:
            continue
        if app_name == APP_NAME:
            for d in cfg.get("deployments", []):
                if d.get("name") == DEPLOYMENT:
                    d.setdefault("user_config", {}).update(model_name=name, model_version=version)
        apps.append(cfg)
    _put(settings, apps)
    if wait_s:
        wait_for_model(settings, name, version, wait_s)
    return {"model": name, "version": version}


def status(settings: Settings) -> dict | None:
    state = _request(settings, "GET")
    app = (state.get("applications") or {}).get(APP_NAME)
    if not app:
        return None
    dep = (app.get("deployments") or {}).get(DEPLOYMENT, {})
    cfg = next((d for d in (app.get("deployed_app_config") or {}).get("deployments", [])
                if d.get("name") == DEPLOYMENT), {})
    replicas = [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]
    return {"status": app.get("status"), "message": app.get("message", ""), "deployment_status": dep.get("status"),
            "replicas": len(replicas), "autoscaling": cfg.get("autoscaling_config", {}),
            "model": cfg.get("user_config", {}).get("model_name"),
            "version": cfg.get("user_config", {}).get("model_version"), "url": settings.serve_url}


def remove(settings: Settings) -> bool:
    others = _other_apps(settings)
    if status(settings) is None:
        return False
    if others:
        _put(settings, others)
    else:
        _request(settings, "DELETE")
    return True
