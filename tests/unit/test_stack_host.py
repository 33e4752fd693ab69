"""`stack up --host ADDR` without a stack: the address check, the MLflow credentials in the
settings and in the process's environment, the jobs' environment of an exposed stack, and the
lines that say what is exposed where."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from cluster.stack_expose import exposure_lines, validate_host
from img2img_cli.app import app


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A tmp state dir, no MLflow credentials in the environment (restored afterwards)."""
    monkeypatch.setenv("IMG2IMG_STATE_DIR", str(tmp_path))
    for key in ("IMG2IMG_MLFLOW_USERNAME", "IMG2IMG_MLFLOW_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, "x")  # recorded, so that the test's own changes are undone too
        monkeypatch.delenv(key)
    return tmp_path


def _record(state, **data) -> None:
    (state / "stack.json").write_text(json.dumps({"ports": {}, "pids": {}, **data}))


@pytest.mark.parametrize("addr, message", [
    ("foo", "is not an IP address"),
    ("10.0.0.5.1", "is not an IP address"),
    ("127.0.0.1", "is the default"),
    ("0.0.0.0", "would expose every interface"),
    ("::1", "only IPv4"),
    ("192.0.2.77", "is not an address of this machine"),  # TEST-NET-1: no machine has it
])
def test_a_bad_host_is_one_line(addr, message):
    with pytest.raises(Img2ImgError, match=message):
        validate_host(addr)


def test_another_loopback_address_is_a_host():
    assert validate_host(" 127.0.0.2 ") == "127.0.0.2"


def test_cli_refuses_a_bad_host_before_starting_anything(state):
    r = CliRunner().invoke(app, ["stack", "up", "--host", "127.0.0.1"])
    assert r.exit_code == 1 and r.output.startswith("Error: --host 127.0.0.1 is the default"), r.output
    assert "Traceback" not in r.output and not (state / "stack.json").exists()


def test_mlflow_credentials_come_from_the_environment_else_the_state_dir(state, monkeypatch):
    assert get_settings().mlflow_credentials() is None
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ  # none known: the environment is left alone
    (state / "credentials.json").write_text(json.dumps({"access_key": "a", "secret_key": "s",
                                                         "mlflow_username": "u", "mlflow_password": "p"}))
    assert get_settings().mlflow_credentials() == ("u", "p")
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("u", "p")
    monkeypatch.setenv("IMG2IMG_MLFLOW_USERNAME", "env-user")
    monkeypatch.setenv("IMG2IMG_MLFLOW_PASSWORD", "env-password")
    s = get_settings()
    assert s.mlflow_credentials() == ("env-user", "env-password")
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "env-password"
    assert "env-password" not in repr(s)


def test_an_mlflow_username_alone_is_a_configuration_error(state, monkeypatch):
    monkeypatch.setenv("IMG2IMG_MLFLOW_USERNAME", "u")
    with pytest.raises(Img2ImgError, match="IMG2IMG_MLFLOW_PASSWORD"):
        get_settings()


def test_job_env_of_an_exposed_stack_names_the_host(state):
    s = Settings(s3_endpoint="127.0.0.1:9100", mlflow_uri="http://127.0.0.1:5100",
                 ray_address="http://127.0.0.1:8300", s3_access_key="AK-not-logged", s3_secret_key="SK-not-logged",
                 mlflow_username="u", mlflow_password="MP-not-logged")
    loopback = s.job_env()
    assert loopback["IMG2IMG_S3_ENDPOINT"] == "127.0.0.1:9100" and s.exposed_host() is None
    _record(state, host="10.0.0.5")
    env = s.job_env()
    assert env["IMG2IMG_S3_ENDPOINT"] == "10.0.0.5:9100"
    assert env["IMG2IMG_MLFLOW_URI"] == "http://10.0.0.5:5100"
    assert env["RAY_API_SERVER_ADDRESS"] == "http://10.0.0.5:8300"
    assert {k: v for k, v in env.items() if k not in ("IMG2IMG_S3_ENDPOINT", "IMG2IMG_MLFLOW_URI",
                                                      "RAY_API_SERVER_ADDRESS")} == \
        {k: v for k, v in loopback.items() if k not in ("IMG2IMG_S3_ENDPOINT", "IMG2IMG_MLFLOW_URI",
                                                         "RAY_API_SERVER_ADDRESS")}
    assert not any("not-logged" in v for v in env.values())


def test_job_env_leaves_services_elsewhere_alone(state):
    _record(state, host="10.0.0.5")
    s = Settings(s3_endpoint="https://store.example:443", mlflow_uri="http://mlflow.example:5000",
                 ray_address="http://127.0.0.1:8265")
    env = s.job_env()
    assert env["IMG2IMG_S3_ENDPOINT"] == "https://store.example:443"
    assert env["IMG2IMG_MLFLOW_URI"] == "http://mlflow.example:5000"
    assert env["RAY_API_SERVER_ADDRESS"] == "http://10.0.0.5:8265"


def test_exposure_lines_say_where_and_how_and_name_no_secret(state):
    s = Settings(s3_endpoint="127.0.0.1:9100", mlflow_uri="http://127.0.0.1:5100",
                 ray_address="http://127.0.0.1:8300", serve_url="http://127.0.0.1:8400",
                 s3_access_key="AK-not-logged", s3_secret_key="SK-not-logged")
    lines = exposure_lines(s, "10.0.0.5", 6380)
    assert len(lines) == 4
    ray, s3, mlflow, loopback = lines
    assert ray.startswith("Ray: ") and "http://10.0.0.5:8300" in ray and "10.0.0.5:6380" in ray
    assert "token" in ray and "every interface" in ray and "stack join --head http://10.0.0.5:8300" in ray
    assert s3.startswith("S3: http://10.0.0.5:9100") and "bound to 10.0.0.5 only" in s3 and "access keys" in s3
    assert mlflow.startswith("MLflow: http://10.0.0.5:5100") and "0.0.0.0" in mlflow and "basic auth" in mlflow
    assert loopback.startswith("Loopback only") and "filer" in loopback and "http://127.0.0.1:8400" in loopback
    assert not any("not-logged" in line for line in lines)
    on_host = exposure_lines(s.model_copy(update={"serve_url": "http://10.0.0.5:8400"}), "10.0.0.5", 6380)
    assert len(on_host) == 5 and on_host[-1].startswith("Serve endpoint: http://10.0.0.5:8400")


def test_exposure_lines_name_services_elsewhere_as_they_are(state):
    s = Settings(s3_endpoint="https://minio.example:9000", mlflow_uri="http://127.0.0.1:5100",
                 ray_address="http://127.0.0.1:8300")
    ray, s3, mlflow, _ = exposure_lines(s, "10.0.0.5", 6380)
    assert s3 == "S3: https://minio.example:9000 (not started by this stack: other machines use it there as configured)"
    assert mlflow.startswith("MLflow: http://10.0.0.5:5100") and ray.startswith("Ray: dashboard / Jobs API")
