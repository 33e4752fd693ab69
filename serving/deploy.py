"""Deploying the `enhancer` app through the Ray dashboard's Serve REST API (what `serve deploy`
does), so it works the same against the local head and a remote cluster."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from urllib.parse import urlparse

import httpx

from cluster.errors import Img2ImgError
from cluster.services import cluster_resources, poll_until
from cluster.settings import Settings
from registry.refs import resolve
from serving.options import DEFAULTS, ServeOptions, config_id
from translator.allocator import OPT_OUT

APP_NAME, DEPLOYMENT = "enhancer", "Enhancer"
# Requests share a replica's CPUs (up to max_ongoing_requests at once), so the longest one takes
# a few times what it takes alone; the limit is never under a minute.
SLOWDOWN, MIN_REQUEST_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S = 3.0, 60.0, DEFAULTS.request_timeout_s
SHUTDOWN_MARGIN_S = 15.0  # a planned stop outlasts the request limit by this much


def time_limits(max_pixels: int, seconds_per_megapixel: float | None,
                request_timeout_s: float | None = None) -> tuple[float, float]:
    """-> (request_timeout_s, graceful_shutdown_timeout_s), in seconds.

    The longest request a deployment accepts is `max_pixels` at the replica's measured speed
    (seconds per megapixel on its device), times SLOWDOWN for concurrent requests. Requests past
    the limit get a JSON 504; a planned replica stop waits SHUTDOWN_MARGIN_S longer than the
    limit, so every accepted request finishes or is answered before the replica goes away."""
    if request_timeout_s is None:
        if seconds_per_megapixel is None:
            request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S
        else:
            longest = max_pixels / 1e6 * seconds_per_megapixel
            request_timeout_s = max(MIN_REQUEST_TIMEOUT_S, math.ceil(SLOWDOWN * longest))
    return float(request_timeout_s), float(request_timeout_s + SHUTDOWN_MARGIN_S)


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


def replica_bounds(min_replicas: int = 1, max_replicas: int | None = None) -> tuple[int, int]:
    """Autoscaling bounds -> (min, max). An upper bound not given is 2, or --min-replicas when
    that is higher: a typed lower bound is never refused because of a default upper one.
    Raises Img2ImgError unless 1 <= min <= max."""
    if max_replicas is None:
        max_replicas = max(2, min_replicas)
    if not 1 <= min_replicas <= max_replicas:
        raise Img2ImgError(f"need 1 <= --min-replicas ({min_replicas}) <= --max-replicas ({max_replicas})")
    return min_replicas, max_replicas


def deploy(settings: Settings, model: str = "", *, min_replicas: int = 1, max_replicas: int | None = None,
           target_ongoing_requests: float = 2.0, max_batch_size: int = DEFAULTS.max_batch_size,
           batch_wait_ms: float = DEFAULTS.batch_wait_timeout_s * 1000, num_cpus: float = DEFAULTS.num_cpus,
           tile: int = DEFAULTS.tile, overlap: int = DEFAULTS.overlap, max_pixels: int = DEFAULTS.max_pixels,
           upscale_delay_s: float = 5, downscale_delay_s: float = 30, wait_s: float = 300,
           runtime: str = DEFAULTS.runtime, threads: int | None = None, memory_format: str = DEFAULTS.memory_format,
           precision: str = DEFAULTS.precision, request_timeout_s: float | None = None,
           upload_timeout_s: float = DEFAULTS.upload_timeout_s, retain_freed_memory: bool = True) -> dict:
    """Deploy the enhancer app serving `model`. `runtime` auto (torch on GPU; on CPU the fastest runtime per image size, timed at start: serving.model.load) | torch | onnx;
    `threads` per replica (default: floor(num_cpus), at least 1); `memory_format` and `precision`
    apply to torch. `request_timeout_s` (default: sized from the replica's measured speed) bounds a
    request's compute, from when its body has arrived; the body has `upload_timeout_s` to arrive
    (408 past it); planned replica stops wait the compute limit plus a margin.
    `retain_freed_memory=False` starts replicas with glibc's malloc defaults
    (translator/allocator.py; the benchmarks' baseline rows)."""
    from serving.model import version_run_id
    from serving.runtime import threads_for

    if not model:
        raise Img2ImgError("give --model NAME@champion (or NAME/VERSION)")
    min_replicas, max_replicas = replica_bounds(min_replicas, max_replicas)
    # Checked here, not by Serve: a config Serve refuses leaves the app DEPLOY_FAILED with no
    # replica, so the endpoint that was serving is gone until the next good deploy.
    for option, value in (("--target-ongoing-requests", target_ongoing_requests), ("upscale_delay_s", upscale_delay_s),
                          ("downscale_delay_s", downscale_delay_s), ("--request-timeout", request_timeout_s)):
        if value is not None and not math.isfinite(value):
            raise Img2ImgError(f"{option} must be a finite number, got {value}")
    if target_ongoing_requests <= 0:
        raise Img2ImgError(f"--target-ongoing-requests must be > 0, got {target_ongoing_requests:g}")
    if upscale_delay_s < 0 or downscale_delay_s < 0:
        raise Img2ImgError("autoscaling delays must be >= 0 seconds")
    if request_timeout_s is not None and request_timeout_s <= 0:
        raise Img2ImgError(f"--request-timeout must be > 0 seconds, got {request_timeout_s:g}")
    options = ServeOptions(tile=tile, overlap=overlap, max_pixels=max_pixels, max_batch_size=max_batch_size,
                           batch_wait_timeout_s=batch_wait_ms / 1000.0, num_cpus=num_cpus, runtime=runtime,
                           threads=threads, memory_format=memory_format, precision=precision,
                           upload_timeout_s=upload_timeout_s)
    options.check()
    cpus = cluster_resources(settings).get("CPU")
    if cpus is not None and num_cpus > cpus:  # no node could place a replica: it would wait forever
        raise Img2ImgError(f"--num-cpus {num_cpus:g} is more than this Ray cluster has ({cpus:g} CPUs)")
    name, version = resolve(settings.mlflow_uri, model)
    limit, grace = time_limits(max_pixels, None, request_timeout_s)  # sized again once a replica measured its speed
    options = replace(options, threads=threads or threads_for(num_cpus), request_timeout_s=limit)
    user_config = {"model_name": name, "model_version": version, "tracking_uri": settings.mlflow_uri,
                   "model_run_id": version_run_id(settings.mlflow_uri, name, version), **options.user_config()}
    if settings.serve_api_key:  # only a hash travels; the key itself never leaves the client
        user_config["api_key_sha256"] = hashlib.sha256(settings.serve_api_key.get_secret_value().encode()).hexdigest()
    autoscaling = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                   "target_ongoing_requests": target_ongoing_requests, "upscale_delay_s": upscale_delay_s,
                   "downscale_delay_s": downscale_delay_s}
    actor_options: dict = {"num_cpus": num_cpus, **replica_reservation(settings, num_cpus, min_replicas)}
    if not retain_freed_memory:  # a process-wide setting: only new replica processes can drop it
        actor_options["runtime_env"] = {"env_vars": {OPT_OUT: "0"}}
    app = {"name": APP_NAME, "route_prefix": "/", "import_path": "serving.app:app",
           "deployments": [{"name": DEPLOYMENT, "user_config": user_config, "autoscaling_config": autoscaling,
                            "max_ongoing_requests": max(16, max_batch_size * 2),
                            "graceful_shutdown_timeout_s": grace, "graceful_shutdown_wait_loop_s": 1,
                            "ray_actor_options": actor_options}]}
    _put(settings, [*_other_apps(settings), app])
    limits = {"request_timeout_s": limit, "graceful_shutdown_timeout_s": grace}
    if wait_s:
        wait_for_model(settings, name, version, wait_s, config_id(user_config))
        if request_timeout_s is None:
            limits = size_time_limits(settings, wait_s)
    return {"model": name, "version": version, "url": settings.serve_url, "autoscaling": autoscaling,
            "runtime": runtime, "threads": user_config["threads"], **limits}


def replica_reservation(settings: Settings, num_cpus: float, min_replicas: int) -> dict:
    """Replicas reserve the admission resource beside their CPUs (cluster.admission), so jobs and
    replicas never count on the same CPUs. Refuses (Img2ImgError) a deploy whose `min_replicas`
    would need CPUs that queued or running jobs have reserved. -> extra `ray_actor_options`."""
    from cluster import admission

    cap = admission.capacity(settings.ray_address, settings.ray_auth_headers())
    if cap is None:  # a cluster started without admission resources: replicas use CPUs only
        return {}
    current = status(settings)
    held = (current or {}).get("replicas", 0) * float(num_cpus)  # this app's replicas give theirs back
    need = min_replicas * num_cpus
    if need > cap.free + held:
        raise Img2ImgError(f"--min-replicas {min_replicas} x --num-cpus {num_cpus:g} = {need:g} CPUs, but only "
                           f"{cap.free + held:g} of the cluster's {cap.total:g} are not reserved by jobs "
                           "(see `img2img jobs ls`); deploying would starve them: wait for them, stop one "
                           "(`img2img jobs stop ID`), or ask for fewer replicas / CPUs")
    return {"resources": {admission.RESOURCE: float(num_cpus)}}


def size_time_limits(settings: Settings, wait_s: float = 120) -> dict:
    """Re-size the running deployment's request limit and graceful shutdown from the speed its
    replica measured (GET /model) -> the limits now in force. A lightweight update: replicas
    keep running; only their user_config and shutdown timeout change."""
    try:
        info = httpx.get(settings.serve_url.rstrip("/") + "/model", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        info = {}
    state = _request(settings, "GET")
    apps = [a["deployed_app_config"] for a in (state.get("applications") or {}).values() if a.get("deployed_app_config")]
    dep = next((d for a in apps if a.get("name") == APP_NAME for d in a.get("deployments", [])
                if d.get("name") == DEPLOYMENT), None)
    if dep is None:
        raise Img2ImgError("no enhancer app is deployed (`img2img serve deploy` first)")
    uc = dep.setdefault("user_config", {})
    limit, grace = time_limits(int(uc.get("max_pixels", DEFAULTS.max_pixels)), info.get("seconds_per_megapixel"))
    if (uc.get("request_timeout_s"), dep.get("graceful_shutdown_timeout_s")) != (limit, grace):
        uc["request_timeout_s"], dep["graceful_shutdown_timeout_s"] = limit, grace
        _put(settings, apps)
        wait_for_model(settings, uc["model_name"], str(uc["model_version"]), wait_s, config_id(uc))
    return {"request_timeout_s": limit, "graceful_shutdown_timeout_s": grace,
            "seconds_per_megapixel": info.get("seconds_per_megapixel")}


def load_failure(status: int, body: dict, name: str, version: str, cid: str | None) -> str | None:
    """The load error a replica reports (GET /model: `status` and its JSON `body`) for this very
    deployment of `name` v`version`, or None: a 200 that has applied config `cid` yet kept its
    old model, or a 503 whose error names this version."""
    if not isinstance(body, dict):
        return None
    if status == 200 and cid is not None and body.get("config_id") == cid and body.get("load_error"):
        return str(body["load_error"])
    tag = f"could not load {name} v{version}:"
    if status == 503 and tag in str(body.get("error", "")):
        return str(body["error"]).split(tag, 1)[1].strip()
    return None


def wait_for_model(settings: Settings, name: str, version: str, timeout: float, cid: str | None = None) -> None:
    """Return once GET /model reports `name` v`version` (and, given `cid`, that exact config);
    raise Img2ImgError when the app fails to deploy or `timeout` seconds pass."""
    last = ""

    def served() -> bool:
        nonlocal last
        try:
            r = httpx.get(settings.serve_url.rstrip("/") + "/model", timeout=5)
            info = r.json() if r.status_code == 200 else {}
            if (info.get("version") == str(version) and info.get("name") == name
                    and (cid is None or info.get("config_id") == cid)):
                return True
            failed = load_failure(r.status_code, r.json(), name, version, cid)
            if failed:  # the replica applied this config but could not load the model: no use waiting
                raise Img2ImgError(f"the endpoint could not load {name} v{version}: {failed}")
            last = r.text[:200]
        except (httpx.HTTPError, ValueError) as e:
            last = type(e).__name__
        app = status(settings) or {}
        if app.get("status") == "DEPLOY_FAILED":
            raise Img2ImgError(f"Serve app failed to deploy: {app.get('message', '')[:300]}")
        return False

    if poll_until(served, timeout, interval_s=1):
        return
    raise Img2ImgError(f"the endpoint did not serve {name} v{version} within {timeout:.0f}s (last: {last})")


def redeploy_model(settings: Settings, model: str, wait_s: float = 300) -> dict:
    """Swap the served model, keeping the running app's other options (user_config update)."""
    st = status(settings)
    if not st:
        raise Img2ImgError("no enhancer app is deployed; deploy one with: img2img serve deploy --model NAME@champion")
    from serving.model import version_run_id

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
                    d.setdefault("user_config", {}).update(
                        model_name=name, model_version=version,
                        model_run_id=version_run_id(settings.mlflow_uri, name, version))
        apps.append(cfg)
    _put(settings, apps)
    if wait_s:
        wait_for_model(settings, name, version, wait_s)
        return {"model": name, "version": version, **size_time_limits(settings, wait_s)}
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
            "version": cfg.get("user_config", {}).get("model_version"), "url": settings.serve_url,
            "request_timeout_s": cfg.get("user_config", {}).get("request_timeout_s"),
            "graceful_shutdown_timeout_s": cfg.get("graceful_shutdown_timeout_s")}


def remove(settings: Settings) -> bool:
    others = _other_apps(settings)
    if status(settings) is None:
        return False
    if others:
        _put(settings, others)
    else:
        _request(settings, "DELETE")
    return True


def replica_pids(settings: Settings) -> list[int]:
    """Process ids of the enhancer's live replicas (for fault-injection tests and benchmarks),
    from the dashboard's state API; [] when none."""
    r = httpx.get(settings.ray_address.rstrip("/") + "/api/v0/actors",
                  params={"detail": "true", "limit": 10000, "filter_keys": "state", "filter_predicates": "=",
                          "filter_values": "ALIVE"},
                  headers=settings.ray_auth_headers(), timeout=30)
    rows = ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    return [int(a["pid"]) for a in rows
            if str(a.get("class_name", "")).startswith(f"ServeReplica:{APP_NAME}:{DEPLOYMENT}") and a.get("pid")]
