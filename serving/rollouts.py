"""Starting and ending a rollout from the client (`img2img serve canary|shadow|rollout`),
through the dashboard's Serve REST API like `serve deploy`: the challenger runs as its own Serve
app (`enhancer-challenger`, no HTTP route) built from the enhancer's deployment, and the plan
(serving.rollout.Plan) travels in the enhancer's user_config, so every ingress replica follows
it. Ending a rollout keeps the plan (state promoted/aborted) so `rollout status` shows it.
Clients that start or end a rollout at the same moment are serialised by the app's ledger
(`claimed`): one goes on, the others get one `Error:` line naming what the first is doing."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import httpx

from cluster.errors import Img2ImgError
from cluster.services import poll_until
from cluster.settings import Settings
from registry.claims import champion_claim
from registry.refs import resolve
from serving.configs import APP_NAME, CHALLENGER_APP, CHALLENGER_IMPORT_PATH, DEPLOYMENT
from serving.deploy import _put, _request, wait_for_model
from serving.rollout import LIVE, Limits, check_share, parse_plan
from serving.rollout_ledger import cite_rollout, close_run, fail_run, open_run

NOT_DEPLOYED = "no enhancer app is deployed; deploy the champion first: img2img serve deploy --model NAME@champion"


def _apps(settings: Settings) -> dict[str, dict]:
    state = _request(settings, "GET")
    return {name: copy.deepcopy(app["deployed_app_config"]) for name, app in (state.get("applications") or {}).items()
            if app.get("deployed_app_config")}


def _enhancer(apps: dict[str, dict]) -> dict:
    """The Enhancer deployment's config in the enhancer app (a reference into `apps`)."""
    dep = next((d for d in (apps.get(APP_NAME) or {}).get("deployments", []) if d.get("name") == DEPLOYMENT), None)
    if dep is None:
        raise Img2ImgError(NOT_DEPLOYED)
    return dep


def _wait_applied(settings: Settings, dep: dict, wait_s: float) -> None:
    """Wait until the enhancer serves the deployment `dep` this client declared (another client's
    different declaration meanwhile fails it at once: serving.deploy.wait_for_model)."""
    uc = dep["user_config"]
    wait_for_model(settings, uc["model_name"], str(uc["model_version"]), wait_s, dep)


def _endpoint(settings: Settings, method: str, path: str, **kwargs) -> httpx.Response:
    key = settings.serve_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    try:
        return httpx.request(method, settings.serve_url.rstrip("/") + path, headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as e:
        raise Img2ImgError(f"the endpoint at {settings.serve_url} did not answer {path} ({type(e).__name__})") from None


@contextmanager
def claimed(settings: Settings, what: str, ttl_s: float) -> Iterator[None]:
    """Hold the rollout's claim in the enhancer app's ledger while the block runs (at most
    `ttl_s` seconds: a client killed meanwhile blocks the others no longer). Raises
    Img2ImgError (one line) when another client holds it."""
    token = uuid.uuid4().hex
    r = _endpoint(settings, "POST", "/rollout/claim", params={"token": token, "what": what, "ttl_s": ttl_s})
    if r.status_code != 200:
        raise Img2ImgError(f"the endpoint answered /rollout/claim with {r.status_code}: {r.text[:200]}")
    if r.json().get("held_by"):
        raise Img2ImgError(r.json()["held_by"])
    try:
        yield
    finally:
        try:
            _endpoint(settings, "DELETE", "/rollout/claim", params={"token": token})
        except Img2ImgError:  # the claim expires by itself
            pass


def start(settings: Settings, mode: str, model: str, percent: float = 0.0, sample: float = 0.0,
          limits: Limits | None = None, wait_s: float = 300, steps: list[float] | None = None,
          interval_s: float = 0.0, background: bool = True) -> dict[str, Any]:
    """Start a `mode` ("canary": `percent` 0-100 of requests answered by the challenger;
    "shadow": a `sample` 0-1 share mirrored to it) with challenger `model` (NAME@alias or
    NAME/VERSION of the served model's registered name) -> the plan as data. Opens the
    rollout's MLflow run. A canary with `steps` (percent, increasing; serving.rollout_steps)
    starts at the first and moves to the next every `interval_s` seconds while the guards hold.
    A shadow's challenger computes at a lower OS priority (`background`, ReplicaOptions.background;
    False: at the champion's, as the benchmark's comparison row).
    Raises Img2ImgError (one line) when no champion is deployed, a rollout is already running or
    being started or ended by another client, the model or version is unknown, the challenger is
    the served version or another registered model, or the share is out of range."""
    if steps:
        percent = steps[0]
    check_share(percent if mode == "canary" else None, sample if mode == "shadow" else None)
    _enhancer(_apps(settings))
    with claimed(settings, f"starting a {mode} of {model}", 2 * wait_s + 120):
        return _start(settings, mode, model, percent, sample, limits, wait_s, steps or [], interval_s, background)


def _start(settings: Settings, mode: str, model: str, percent: float, sample: float, limits: Limits | None,
           wait_s: float, steps: list[float], interval_s: float, background: bool = True) -> dict[str, Any]:
    from registry.loading import version_run_id  # deferred: torch and MLflow (as serving.deploy)

    apps = _apps(settings)
    uc = _enhancer(apps).setdefault("user_config", {})
    running = parse_plan(uc.get("rollout"))
    if running is not None and running.state in LIVE:
        raise Img2ImgError(f"a {running.mode} of {running.name} v{running.version} is already running; "
                           "end it first: img2img serve rollout promote|abort")
    name, version = resolve(settings.mlflow_uri, model)
    champion = str(uc["model_version"])
    if name != uc["model_name"]:
        raise Img2ImgError(f"the endpoint serves {uc['model_name']!r}; a challenger must be a version of it, "
                           f"not of {name!r}")
    if version == champion:
        raise Img2ImgError(f"{name} v{version} is the served champion; pick another version as the challenger")
    challenger = copy.deepcopy(apps[APP_NAME])
    challenger.update(name=CHALLENGER_APP, route_prefix=None, import_path=CHALLENGER_IMPORT_PATH)
    (dep,) = [d for d in challenger["deployments"] if d.get("name") == DEPLOYMENT]
    dep["user_config"].pop("rollout", None)
    dep["user_config"].update(model_version=version, model_run_id=version_run_id(settings.mlflow_uri, name, version))
    if mode == "shadow" and background:  # no user waits for a shadow's answers: the champion comes first
        dep["user_config"]["background"] = True
    plan = {"id": uuid.uuid4().hex[:12], "mode": mode, "state": mode, "name": name, "version": version,
            "champion_version": champion, "app": CHALLENGER_APP, "percent": float(percent if mode == "canary" else 0),
            "sample": float(sample if mode == "shadow" else 0), "limits": (limits or Limits()).model_dump(),
            "steps": steps if mode == "canary" else [], "interval_s": float(interval_s if mode == "canary" else 0),
            "tracking_uri": settings.mlflow_uri}
    apps[CHALLENGER_APP] = challenger
    _put(settings, list(apps.values()))  # the challenger first: the ingress asks for its handle
    try:
        if not poll_until(lambda: _app_status(settings, CHALLENGER_APP) == "RUNNING", wait_s, interval_s=1):
            raise Img2ImgError(f"the challenger {name} v{version} did not start within {wait_s:.0f}s "
                               f"(status {_app_status(settings, CHALLENGER_APP)}); the champion serves alone")
        plan["run_id"] = open_run(settings.mlflow_uri, name, champion, version, plan)
        uc["rollout"] = parse_plan(plan).model_dump()
        _put(settings, list(apps.values()))
        _wait_applied(settings, _enhancer(apps), wait_s)
    except BaseException as e:  # Ctrl-C included: no challenger app or rollout run is left behind unnamed
        try:
            live = _abandon(settings, plan, str(e) or type(e).__name__)
        except Exception:  # Serve or MLflow unreachable too: the first error is the one to report
            live = False
        if live and isinstance(e, Img2ImgError):
            raise Img2ImgError(f"{e}; the {mode} of {name} v{version} was declared and runs: end it with "
                               "img2img serve rollout abort") from None
        raise
    return uc["rollout"]


def _abandon(settings: Settings, plan: dict[str, Any], reason: str) -> bool:
    """A start that failed after its challenger app was declared -> whether the rollout is live:
    when the enhancer as declared now runs this plan, it and its run are left for `rollout
    promote|abort`. Otherwise the challenger app goes (from the apps as declared now) and the run,
    if open, ends FAILED, saying why."""
    apps = _apps(settings)
    try:
        uc = _enhancer(apps).get("user_config", {}) if APP_NAME in apps else {}
        running = parse_plan(uc.get("rollout"))
    except (Img2ImgError, TypeError, ValueError):  # no Enhancer deployment, or a plan that does not parse: not ours
        running = None
    if running is not None and running.id == plan["id"]:
        return True
    _drop_challenger(settings, apps)
    fail_run(settings.mlflow_uri, plan.get("run_id"), f"the rollout did not start: {reason}")
    return False


def _drop_challenger(settings: Settings, apps: dict[str, dict]) -> None:
    """Declare `apps` (read just before: another client's deploy meanwhile stays) without the challenger."""
    _put(settings, [a for n, a in apps.items() if n != CHALLENGER_APP])


def _app_status(settings: Settings, name: str) -> str | None:
    return ((_request(settings, "GET").get("applications") or {}).get(name) or {}).get("status")


def status(settings: Settings) -> dict[str, Any]:
    """The current or last rollout as the ingress reports it (GET /rollout): plan, state,
    reason, per-version requests, errors, p50/p95 and the shadow comparison; {"state": "none"}
    when there has been none. Raises Img2ImgError when no enhancer is deployed or it is down."""
    _enhancer(_apps(settings))
    r = _endpoint(settings, "GET", "/rollout")
    try:
        body = r.json()
    except ValueError:
        raise Img2ImgError(f"the endpoint at {settings.serve_url} answered /rollout with no JSON") from None
    if r.status_code != 200:
        raise Img2ImgError(f"the endpoint answered /rollout with {r.status_code}: {body.get('error', '')}")
    return body


def end(settings: Settings, decision: str, wait_s: float = 300) -> dict[str, Any]:
    """End the running (or automatically aborted) rollout: "promote" makes the challenger
    `champion` in the registry (the old one joins the history `models rollback` walks) and the
    ingress serves it; "abort" keeps the champion. The ingress's replicas swap in place (requests
    in flight finish; a request the challenger app loses while it stops is answered by the
    champion), then the challenger app is removed and the MLflow run closed with the numbers and
    decision. -> the final status. Raises Img2ImgError when no rollout is running, or on promoting
    one that aborted itself, or while another client starts or ends one."""
    _enhancer(_apps(settings))
    with claimed(settings, f"{decision.rstrip('e')}ing the rollout", 2 * wait_s + 120):
        return _end(settings, decision, wait_s)


def _end(settings: Settings, decision: str, wait_s: float) -> dict[str, Any]:
    from registry.loading import version_run_id
    from registry.models import make_champion

    apps = _apps(settings)
    uc = _enhancer(apps).setdefault("user_config", {})
    plan = parse_plan(uc.get("rollout"))
    if plan is None or plan.state not in LIVE:
        raise Img2ImgError("no rollout is running; start one with: img2img serve canary|shadow --model NAME/VERSION")
    live = status(settings)
    auto = live.get("id") == plan.id and live.get("state") == "aborted"
    if decision == "promote" and auto:
        raise Img2ImgError(f"this rollout aborted itself ({live.get('reason')}); end it with: img2img serve rollout abort")
    reason = live.get("reason") if auto else f"{decision}d by a user"
    # a promotion holds the model's champion claim until the ingress serves it: a rollback
    # meanwhile is refused, so its reload cannot land before this swap
    with (champion_claim(settings, plan.name, f"promoting the {plan.mode}'s v{plan.version}", ttl_s=wait_s + 120)
          if decision == "promote" else nullcontext()):
        if decision == "promote":
            make_champion(settings, plan.name, plan.version, plan.champion_version, check_current=False)
            cite_rollout(settings.mlflow_uri, plan.name, plan.version, plan.run_id)
            uc.update(model_version=plan.version,
                      model_run_id=version_run_id(settings.mlflow_uri, plan.name, plan.version))
        ended = {"promote": "promoted", "abort": "aborted"}[decision]
        uc["rollout"] = plan.model_copy(update={"state": ended, "reason": reason,
                                                "decided_by": "automatic" if auto else "user"}).model_dump()
        _put(settings, list(apps.values()))  # the challenger app stays until the ingress has moved
        _wait_applied(settings, _enhancer(apps), wait_s)
        # the apps as declared now, not as read before the wait: another app's deploy meanwhile stays
        _drop_challenger(settings, _apps(settings))
    final = status(settings)
    close_run(settings.mlflow_uri, plan.run_id, final)
    return final
