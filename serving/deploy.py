"""Deploying the `enhancer` app through the Ray dashboard's Serve REST API (what `serve deploy`
does), so it works the same against the local head and a remote cluster."""

from __future__ import annotations

import hashlib
from urllib.parse import urlparse

import httpx

from cluster import admission
from cluster.errors import Img2ImgError
from cluster.services import cluster_resources, poll_until
from cluster.settings import Settings
from registry.refs import resolve
from serving.configs import APP_NAME, CHALLENGER_APP, DEPLOYMENT, app_config
from serving.options import DEFAULTS, SCALING, ReplicaOptions, Scaling, config_id, time_limits
from translator.allocator import OPT_OUT


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
        if name not in (APP_NAME, CHALLENGER_APP) and app.get("deployed_app_config"):  # a new app ends a rollout
            apps.append(app["deployed_app_config"])
    return apps


def deploy(settings: Settings, model: str = "", replica: ReplicaOptions = DEFAULTS, scaling: Scaling = SCALING,
           *, wait_s: float = 300, retain_freed_memory: bool = True) -> dict:
    """Deploy the enhancer app serving `model` (NAME@alias, NAME/VERSION) with `replica`'s
    options and `scaling` (both checked when they were built: serving/options.py). An unset
    `replica.request_timeout_s` is sized from the replica's measured speed once it answers;
    planned replica stops wait the compute limit plus a margin. `threads` unset: floor(num_cpus).
    `retain_freed_memory=False` starts replicas with glibc's malloc defaults
    (translator/allocator.py; the benchmarks' baseline rows). Waits up to `wait_s` seconds
    (0: not at all) for the endpoint to serve it. -> {model, version, url, autoscaling,
    runtime, threads, declared_by_another (another client declared the same deployment while this
    one started: its time limits stand), request_timeout_s, graceful_shutdown_timeout_s[,
    seconds_per_megapixel]}.
    Raises Img2ImgError, before the running app is touched, for a reservation the cluster cannot
    place, an unknown model, or replicas that would starve queued jobs (a config Serve refuses
    would leave the app DEPLOY_FAILED with no replica)."""
    # deferred: they import torch and MLflow, which `serve status` and `serve rm` need not load
    from registry.loading import version_run_id
    from translator.runtime import threads_for

    if not model:
        raise Img2ImgError("give --model NAME@champion (or NAME/VERSION)")
    resources = cluster_resources(settings)
    for key, flag, want in (("CPU", "--num-cpus", scaling.num_cpus), ("GPU", "--num-gpus", scaling.num_gpus)):
        # {}: the dashboard did not answer (no check); a cluster that answered without GPUs has 0
        have = resources.get(key, 0.0 if key == "GPU" and "CPU" in resources else None)
        if want and have is not None and want > have:  # no node could place a replica: it would wait forever
            raise Img2ImgError(f"{flag} {want:g} is more than this Ray cluster has ({have:g} {key}s)")
    name, version = resolve(settings.mlflow_uri, model)
    sized = replica.request_timeout_s is None
    # the compute limit is sized again once a replica has measured its speed
    limit = time_limits(replica.max_pixels, None, replica.request_timeout_s)[0]
    replica = type(replica)(**{**replica.model_dump(), "threads": replica.threads or threads_for(scaling.num_cpus),
                               "request_timeout_s": limit})
    served = {"model_name": name, "model_version": version, "tracking_uri": settings.mlflow_uri,
              "model_run_id": version_run_id(settings.mlflow_uri, name, version)}
    if settings.serve_api_key:  # only a hash travels; the key itself never leaves the client
        served["api_key_sha256"] = hashlib.sha256(settings.serve_api_key.get_secret_value().encode()).hexdigest()
    actor_options: dict = replica_reservation(settings, scaling.num_cpus, scaling.min_replicas)
    if not retain_freed_memory:  # a process-wide setting: only new replica processes can drop it
        actor_options["runtime_env"] = {"env_vars": {OPT_OUT: "0"}}
    app = app_config(served, replica, scaling, actor_options)
    (dep,) = app["deployments"]
    _put(settings, [*_other_apps(settings), app])
    limits = {"request_timeout_s": dep["user_config"]["request_timeout_s"],
              "graceful_shutdown_timeout_s": dep["graceful_shutdown_timeout_s"]}
    followed = False
    if wait_s:
        followed = wait_for_model(settings, name, version, wait_s, dep)
        if followed:  # another client declared the same: its limits (sized, or its own) stand
            limits = limits_in_force(settings, dep)
        elif sized:
            limits = size_time_limits(settings, wait_s, dep)
    return {"model": name, "version": version, "url": settings.serve_url, "autoscaling": dep["autoscaling_config"],
            "runtime": replica.runtime, "threads": replica.threads, "declared_by_another": followed, **limits}


def limits_in_force(settings: Settings, declared: dict) -> dict:
    """{request_timeout_s, graceful_shutdown_timeout_s} (seconds) of the enhancer as declared now,
    each falling back to the deployment `declared` where the declaration does not say."""
    now = (status(settings) or {}).get("deployment") or {}
    return {"request_timeout_s": now.get("user_config", {}).get(
                "request_timeout_s", declared.get("user_config", {}).get("request_timeout_s")),
            "graceful_shutdown_timeout_s": now.get("graceful_shutdown_timeout_s",
                                                   declared.get("graceful_shutdown_timeout_s"))}


def replica_reservation(settings: Settings, num_cpus: float, min_replicas: int) -> dict:
    """Replicas reserve the admission resource beside their CPUs (cluster.admission), so jobs and
    replicas never count on the same CPUs. Refuses (Img2ImgError) a deploy whose `min_replicas`
    would need CPUs that queued or running jobs have reserved. -> extra `ray_actor_options`."""
    cap = admission.capacity(settings.ray_address, settings.ray_auth_headers())
    if cap is None:  # a cluster started without admission resources: replicas use CPUs only
        return {}
    current = status(settings)
    held = (current or {}).get("replicas", 0) * float(num_cpus)  # this app's replicas give theirs back
    need = min_replicas * num_cpus
    # a refusal is confirmed first: the report may still count a job that has just ended
    cap = admission.confirmed(settings.ray_address, settings.ray_auth_headers(), lambda c: need <= c.free + held, cap)
    if cap is None:  # the cluster now advertises no admission resources
        return {}
    if need > cap.free + held:
        raise Img2ImgError(f"--min-replicas {min_replicas} x --num-cpus {num_cpus:g} = {need:g} CPUs, but only "
                           f"{cap.free + held:g} of the cluster's {cap.total:g} are not reserved by jobs "
                           "(see `img2img jobs ls`); deploying would starve them: wait for them, stop one "
                           "(`img2img jobs stop ID`), or ask for fewer replicas / CPUs")
    return {"resources": {admission.RESOURCE: float(num_cpus)}}


def size_time_limits(settings: Settings, wait_s: float = 120, declared: dict | None = None) -> dict:
    """Re-size the running deployment's request limit and graceful shutdown from the speed its
    replica measured (GET /model) -> the limits now in force. A lightweight update: replicas
    keep running; only their user_config and shutdown timeout change. Given `declared` (the
    deployment this client just waited for), raises Img2ImgError, touching nothing, when another
    client has declared something else since (`superseded`)."""
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
    if declared is not None and not same_intent(declared, dep):
        raise superseded(declared["user_config"]["model_name"], str(declared["user_config"]["model_version"]), dep)
    limit, grace = time_limits(int(uc.get("max_pixels", DEFAULTS.max_pixels)), info.get("seconds_per_megapixel"))
    if (uc.get("request_timeout_s"), dep.get("graceful_shutdown_timeout_s")) != (limit, grace):
        uc["request_timeout_s"], dep["graceful_shutdown_timeout_s"] = limit, grace
        _put(settings, apps)
        wait_for_model(settings, uc["model_name"], str(uc["model_version"]), wait_s, dep)
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


def same_intent(ours: dict, theirs: dict) -> bool:
    """Whether the deployment `theirs` (as the Serve API lists it: the keys its client set, Ray's
    `exclude_unset`) declares what `ours` asked for: equal but for the time limits that
    `size_time_limits` re-writes (user_config.request_timeout_s, graceful_shutdown_timeout_s), a
    version as a number or a string alike."""
    def intent(dep: dict) -> dict:
        uc = {k: v for k, v in (dep.get("user_config") or {}).items() if k != "request_timeout_s"}
        uc["model_version"] = str(uc.get("model_version"))
        return {**{k: v for k, v in dep.items() if k != "graceful_shutdown_timeout_s"}, "user_config": uc}

    return intent(ours) == intent(theirs)


def superseded(name: str, version: str, theirs: dict | None) -> Img2ImgError:
    """The one-line error for a change to `name` v`version` whose declaration another client
    replaced with the deployment `theirs` (None: the app was removed)."""
    uc = (theirs or {}).get("user_config")
    if not uc:
        return Img2ImgError(f"the enhancer app was removed while {name} v{version} started "
                            "(another client ran `img2img serve rm`?)")
    if (uc.get("model_name"), str(uc.get("model_version"))) != (name, str(version)):
        return Img2ImgError(f"another client deployed {uc.get('model_name')} v{uc.get('model_version')} while "
                            f"{name} v{version} started; it serves that model now")
    return Img2ImgError(f"another client deployed {name} v{version} with other options while this change "
                        "started; theirs are in force (see `img2img serve status`)")


def wait_for_model(settings: Settings, name: str, version: str, timeout: float, declared: dict | None = None) -> bool:
    """Return once GET /model reports `name` v`version` (and, given `declared`, the deployment this
    client PUT, the digest of its user_config: `config_id`). Another client may declare the app
    meanwhile (a second `serve deploy`, the first one's time-limit sizing): while what it declares
    is `same_intent` as ours, the wait follows it; otherwise it fails at once, naming what now
    serves. -> True when the config served is another client's (then its time limits stand).
    Raises Img2ImgError then, when the replica cannot load the model, when the app fails to
    deploy, or when `timeout` seconds pass."""
    last, followed = "", False
    cid = config_id(declared["user_config"]) if declared else None

    def served() -> bool:
        nonlocal last, cid, declared, followed
        try:
            r = httpx.get(settings.serve_url.rstrip("/") + "/model", timeout=5)
            body = r.json()
            failed = load_failure(r.status_code, body, name, version, cid)
            if failed:  # the replica applied this config but could not load the model: no use waiting
                raise Img2ImgError(f"the endpoint could not load {name} v{version}: {failed}")
            info = body if r.status_code == 200 and isinstance(body, dict) else {}
            if (info.get("version") == str(version) and info.get("name") == name
                    and (cid is None or info.get("config_id") == cid)):
                return True
            last = r.text[:200]
        except (httpx.HTTPError, ValueError) as e:
            last = type(e).__name__
        app = status(settings) or {}
        if app.get("status") == "DEPLOY_FAILED":
            lines = [line.strip() for line in str(app.get("message") or "").splitlines() if line.strip()]
            # Serve's message is a traceback: its last line is the error (e.g. a missing module)
            raise Img2ImgError(f"Serve app failed to deploy: {(lines[-1] if lines else 'no reason given')[:300]}")
        if declared is not None and app.get("config_id") != cid:  # declared again since: by whom, with what?
            theirs = app.get("deployment") if app.get("status") != "DELETING" else None
            if not theirs or not same_intent(declared, theirs):
                raise superseded(name, version, theirs)
            declared, cid, followed = theirs, app["config_id"], True
        return False

    if poll_until(served, timeout, interval_s=1):
        return followed
    raise Img2ImgError(f"the endpoint did not serve {name} v{version} within {timeout:.0f}s (last: {last})")


RELOAD_WAIT_S = 300
# a reload waits for its replicas, then may wait as long again to size the time limits: the
# champion claim held over a reload (registry/claims.py) lasts that, and 2 minutes more
RELOAD_CLAIM_S = 2 * RELOAD_WAIT_S + 120


def redeploy_model(settings: Settings, model: str, wait_s: float = RELOAD_WAIT_S) -> dict:
    """Swap the served model, keeping the running app's other options (user_config update), and
    wait up to `wait_s` seconds for it as `deploy` does (another client's declaration meanwhile:
    see wait_for_model). -> {model, version[, request_timeout_s, graceful_shutdown_timeout_s,
    seconds_per_megapixel]}. Raises Img2ImgError when no enhancer app is deployed."""
    st = status(settings)
    if not st:
        raise Img2ImgError("no enhancer app is deployed; deploy one with: img2img serve deploy --model NAME@champion")
    from registry.loading import version_run_id  # deferred: torch and MLflow (see deploy)

    name, version = resolve(settings.mlflow_uri, model)
    state = _request(settings, "GET")
    apps, declared = [], None
    for app_name, app in (state.get("applications") or {}).items():
        cfg = app.get("deployed_app_config")
        if not cfg:
            continue
        if app_name == APP_NAME:
            for d in cfg.get("deployments", []):
                if d.get("name") == DEPLOYMENT:
                    uc = d.setdefault("user_config", {})
                    uc.update(model_name=name, model_version=version,
                              model_run_id=version_run_id(settings.mlflow_uri, name, version))
                    declared = d
        apps.append(cfg)
    _put(settings, apps)
    if wait_s:
        if wait_for_model(settings, name, version, wait_s, declared):  # another client's limits stand
            return {"model": name, "version": version, **limits_in_force(settings, declared)}
        return {"model": name, "version": version, **size_time_limits(settings, wait_s, declared)}
    return {"model": name, "version": version}


def status(settings: Settings) -> dict | None:
    """The declared enhancer app, or None when none is: {config_id (the digest its replicas report
    once they apply it), deployment (as declared), status, message, deployment_status, replicas (RUNNING), autoscaling,
    model, version, url, request_timeout_s, graceful_shutdown_timeout_s}."""
    state = _request(settings, "GET")
    app = (state.get("applications") or {}).get(APP_NAME)
    if not app:
        return None
    dep = (app.get("deployments") or {}).get(DEPLOYMENT, {})
    cfg = next((d for d in (app.get("deployed_app_config") or {}).get("deployments", [])
                if d.get("name") == DEPLOYMENT), {})
    replicas = [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]
    uc = cfg.get("user_config")
    return {"config_id": config_id(uc) if uc else None, "deployment": cfg or None, "status": app.get("status"), "message": app.get("message", ""), "deployment_status": dep.get("status"),
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


def replica_pids(settings: Settings, app: str = APP_NAME, deployment: str = DEPLOYMENT) -> list[int]:
    """Process ids of the live replicas of `deployment` in Serve app `app` (the enhancer; a
    rollout's challenger: serving.configs.CHALLENGER_APP; the app's RolloutLedger), for
    fault-injection tests and benchmarks, from the dashboard's state API; [] when none."""
    r = httpx.get(settings.ray_address.rstrip("/") + "/api/v0/actors",
                  params={"detail": "true", "limit": 10000, "filter_keys": "state", "filter_predicates": "=",
                          "filter_values": "ALIVE"},
                  headers=settings.ray_auth_headers(), timeout=30)
    rows = ((r.json().get("data") or {}).get("result") or {}).get("result") or []
    return [int(a["pid"]) for a in rows
            if str(a.get("class_name", "")).startswith(f"ServeReplica:{app}:{deployment}") and a.get("pid")]
