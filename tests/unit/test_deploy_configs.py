"""Production configs cannot run here, but every module, entrypoint and import path they name
must exist in the package, and their settings must parse."""

import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "cluster" / "deploy"


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def import_path_exists(path: str) -> bool:
    module, _, attr = path.partition(":")
    return hasattr(importlib.import_module(module), attr)


def serve_configs():
    yield "serving/config.yaml", yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    svc = load_all(DEPLOY / "kuberay" / "rayservice-enhancer.yaml")[0]
    yield "rayservice", yaml.safe_load(svc["spec"]["serveConfigV2"])


@pytest.mark.parametrize("label, config", list(serve_configs()))
def test_serve_configs_name_real_code_and_options(label, config):
    from serving.app import Enhancer
    from serving.options import DEFAULT_REQUEST_TIMEOUT_S, ReplicaOptions, Scaling, ServedModel

    (app,) = config["applications"]
    assert import_path_exists(app["import_path"]), label
    (dep,) = app["deployments"]
    assert dep["name"] == Enhancer.name
    known = set(ReplicaOptions.model_fields) | set(ServedModel.model_fields)
    assert set(dep["user_config"]) <= known, set(dep["user_config"]) - known
    if label == "serving/config.yaml":  # spells out the defaults: the same values as the options types
        options = {k: v for k, v in dep["user_config"].items() if k in ReplicaOptions.model_fields}
        defaults = ReplicaOptions(request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S).model_dump()  # unsized: the default
        assert options == {k: v for k, v in defaults.items() if v is not None}
        assert dep["ray_actor_options"]["num_cpus"] == Scaling().num_cpus
    a = dep["autoscaling_config"]
    assert 1 <= a["min_replicas"] <= a["max_replicas"]


def test_shipped_serve_configs_are_what_the_option_types_produce():
    """serving/config.yaml and the RayService's serveConfigV2 are written from the types by
    `python -m serving.configs`: a field added, renamed or re-defaulted shows up here until they
    are rewritten."""
    from serving import configs

    assert configs.stale() == [], "rewrite them with: python -m serving.configs"
    for label, config in serve_configs():
        want = configs.local_config() if label == "serving/config.yaml" else configs.rayservice_config()
        assert config == want, label


def test_rayjob_entrypoint_is_a_valid_training_spec():
    from jobs.training.spec import TrainSpec

    job = load_all(DEPLOY / "kuberay" / "rayjob-train.yaml")[0]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.training.driver"]
    assert importlib.util.find_spec("jobs.training.driver") is not None
    spec = TrainSpec.from_json(argv[argv.index("--spec") + 1])
    spec.validate()
    assert spec.use_gpu and spec.workers == job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]


def test_raycronjob_runs_a_valid_pipeline_on_the_team_cluster():
    from cluster.admission import RESOURCE
    from pipelines.spec import PipelineSpec

    cron = load_all(DEPLOY / "kuberay" / "raycronjob-pipeline.yaml")[0]
    cluster = load_all(DEPLOY / "kuberay" / "raycluster.yaml")[0]
    job = cron["spec"]["jobTemplate"]
    assert cron["kind"] == "RayCronJob" and len(cron["spec"]["schedule"].split()) == 5
    assert job["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert set(json.loads(job["entrypointResources"])) == {RESOURCE}
    argv = shlex.split(job["entrypoint"])
    assert argv[:4] == ["exec", "python", "-m", "pipelines.driver"] and "--run-id" not in argv
    assert importlib.util.find_spec("pipelines.driver") is not None
    spec = PipelineSpec.model_validate_json(argv[argv.index("--spec") + 1])
    variable = spec.notify.webhook.removeprefix("env:")
    head_env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert variable in {e["name"] for e in head_env}  # where the driver runs


def test_raycluster_uses_token_auth_and_our_settings():
    cluster = load_all(DEPLOY / "kuberay" / "raycluster.yaml")[0]
    env = {e["name"] for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "IMG2IMG_S3_ENDPOINT", "IMG2IMG_S3_ACCESS_KEY",
            "IMG2IMG_S3_SECRET_KEY", "IMG2IMG_MLFLOW_URI"} <= env
    from cluster.settings import Settings

    for name in (n for n in env if n.startswith("IMG2IMG_")):  # RAY_* are Ray's own variables
        assert name.removeprefix("IMG2IMG_").lower() in Settings.model_fields


def test_compose_commands_name_real_modules():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "mlflow", "ray-head", "ray-gpu-worker"} <= set(services)
    code = re.search(r'python -c "(.*)"', services["make-bucket"]["command"]).group(1)
    for module, name in re.findall(r"from (\S+) import (\w+)", code):
        assert hasattr(importlib.import_module(module), name)
    assert "postgresql://" in services["mlflow"]["command"]
    assert services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY pyproject"):
            assert (ROOT / line.split()[1]).exists(), line


def test_no_secret_values_in_configs():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"(SECRET_KEY|PASSWORD|TOKEN):\s*['\"]?[A-Za-z0-9/+]{8,}", text), path
