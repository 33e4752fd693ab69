"""The `enhancer` Serve application as data, built from the option types (serving/options.py):
what `img2img serve deploy` sends to the dashboard's REST API, and the two shipped configs,
serving/config.yaml (for Ray's own CLI: `serve deploy serving/config.yaml -a
http://127.0.0.1:8265`) and the serveConfigV2 of the KubeRay RayService
(cluster/deploy/kuberay/rayservice-enhancer.yaml).

Rewrite the shipped configs from the types with `python -m serving.configs`;
tests/unit/test_deploy_configs.py fails while they are not current."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from serving.options import ReplicaOptions, Scaling, time_limits

APP_NAME, DEPLOYMENT, IMPORT_PATH = "enhancer", "Enhancer", "serving.app:app"
CHALLENGER_APP = "enhancer-challenger"  # a rollout's challenger: the same deployment, no HTTP route
CHALLENGER_IMPORT_PATH = "serving.app:challenger"  # without the enhancer app's rollout ledger
ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "serving" / "config.yaml"
RAYSERVICE = ROOT / "cluster" / "deploy" / "kuberay" / "rayservice-enhancer.yaml"
log = logging.getLogger("img2img.serve")


def deployment_config(served: dict[str, Any], replica: ReplicaOptions, scaling: Scaling,
                      actor_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Enhancer deployment: `served` (the model keys of serving.options.ServedModel) and
    every replica option in its user_config (options left None are left out; an unsized
    request_timeout_s gets the default), each `scaling` field in its `Flag.section`, plus
    `actor_options` (extra ray_actor_options). A planned stop (downscale, redeploy) waits
    graceful_shutdown_timeout_s, longer than the request limit, for requests in flight."""
    limit, grace = time_limits(replica.max_pixels, None, replica.request_timeout_s)
    sections: dict[str, dict[str, Any]] = {"": {}, "autoscaling_config": {}, "ray_actor_options": {}}
    for name, flag in type(scaling).flags().items():
        value = getattr(scaling, name)
        if value is not None and not (flag.section == "ray_actor_options" and value == 0):  # 0 GPUs: no key
            sections[flag.section][name] = value
    top = {**sections[""], "max_ongoing_requests": scaling.ongoing_limit(replica)}
    return {"name": DEPLOYMENT, **top, "graceful_shutdown_timeout_s": grace, "graceful_shutdown_wait_loop_s": 1,
            "autoscaling_config": sections["autoscaling_config"],
            "ray_actor_options": {**sections["ray_actor_options"], **(actor_options or {})},
            "user_config": {**served, **{k: limit if k == "request_timeout_s" else v
                                         for k, v in replica.model_dump().items()
                                         if v is not None or k == "request_timeout_s"}}}


def app_config(served: dict[str, Any], replica: ReplicaOptions, scaling: Scaling,
               actor_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `enhancer` application: route /, import path serving.app:app, one deployment
    (`deployment_config`)."""
    return {"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
            "deployments": [deployment_config(served, replica, scaling, actor_options)]}


def serve_config(host: str, port: int, served: dict[str, Any], replica: ReplicaOptions,
                 scaling: Scaling) -> dict[str, Any]:
    """A whole Serve config file (http_options and the one application)."""
    return {"http_options": {"host": host, "port": port}, "applications": [app_config(served, replica, scaling)]}


def local_config() -> dict[str, Any]:
    """serving/config.yaml: the defaults of both types, the local stack's addresses."""
    served = {"model_name": "photos", "model_version": "1", "tracking_uri": "http://127.0.0.1:5000"}
    return serve_config("127.0.0.1", 8000, served, ReplicaOptions(), Scaling())


def rayservice_config() -> dict[str, Any]:
    """The RayService's serveConfigV2: one GPU per replica, larger batches, up to 8 replicas."""
    served = {"model_name": "photos", "model_version": "1", "tracking_uri": "http://mlflow.mlflow.svc:5000"}
    return serve_config("0.0.0.0", 8000, served, ReplicaOptions(max_batch_size=16),
                        Scaling(max_replicas=8, downscale_delay_s=60, num_cpus=1, num_gpus=1))


LOCAL_HEADER = """\
# The enhancer app for Ray's own CLI:  serve deploy serving/config.yaml -a http://127.0.0.1:8265
# (with RAY_AUTH_MODE=token and the cluster's token). `img2img serve deploy` does the same
# through the dashboard's REST API and fills in model_version from the registry for you.
# Written by `python -m serving.configs` from serving/options.py (ReplicaOptions: user_config;
# Scaling: autoscaling_config, max_ongoing_requests, ray_actor_options); edit the types, not this.
"""
SERVE_CONFIG_KEY = "  serveConfigV2: |\n"
AFTER_SERVE_CONFIG = "  rayClusterConfig:\n"


def dump(config: dict[str, Any], indent: int = 0) -> str:
    """YAML text of `config`, keys in their order, each line indented by `indent` spaces."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120)
    return "".join(" " * indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def rendered() -> dict[Path, str]:
    """{shipped file: the text it must have}, from the types. Raises ValueError when the
    RayService manifest lacks the serveConfigV2 block."""
    manifest = RAYSERVICE.read_text()
    head, found, rest = manifest.partition(SERVE_CONFIG_KEY)
    tail_at = rest.find(AFTER_SERVE_CONFIG)
    if not found or tail_at < 0:
        raise ValueError(f"{RAYSERVICE} has no '{SERVE_CONFIG_KEY.strip()}' block before 'rayClusterConfig:'")
    return {LOCAL_CONFIG: LOCAL_HEADER + dump(local_config()),
            RAYSERVICE: head + SERVE_CONFIG_KEY + dump(rayservice_config(), 4) + rest[tail_at:]}


def stale() -> list[Path]:
    """The shipped configs whose text differs from what the types produce."""
    return [path for path, text in rendered().items() if path.read_text() != text]


def main() -> int:
    """Rewrite the stale shipped configs; -> exit status 0."""
    for path, text in rendered().items():
        if path.read_text() != text:
            path.write_text(text)
            log.warning("rewrote %s", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
