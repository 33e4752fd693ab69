"""All configuration in one typed object: environment (`IMG2IMG_*`), then `.env`, then defaults
that describe the embedded local stack. Standard variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `MLFLOW_TRACKING_URI`) are respected. Secrets are `SecretStr`, so they
never appear in reprs, logs or MLflow params.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cluster.errors import Img2ImgError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
CREDENTIALS_FILE = "credentials.json"


def _alias(name: str, *fallbacks: str) -> AliasChoices:
    return AliasChoices(f"IMG2IMG_{name}", *fallbacks)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMG2IMG_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    state_dir: Path = Field(default=Path("~/.local/state/img2img"),
                            description="pids, logs, service data of the embedded stack")
    s3_endpoint: str = Field("127.0.0.1:9000", description="S3 host:port (MinIO in production)")
    s3_access_key: SecretStr | None = Field(None, validation_alias=_alias("S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
    s3_secret_key: SecretStr | None = Field(None, validation_alias=_alias("S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"))
    s3_secure: bool = Field(False, description="https to the S3 endpoint")
    s3_region: str = "us-east-1"
    s3_max_attempts: int = Field(5, ge=1, le=20, description="tries per object-store request before the store is "
                                 "reported unavailable: 500/502/503/504, SlowDown and connection resets are retried "
                                 "with exponential backoff (docs/object-store.md)")
    bucket: str = Field("img2img", description="bucket for datasets, checkpoints and MLflow artifacts")
    mlflow_uri: str = Field("http://127.0.0.1:5000", validation_alias=_alias("MLFLOW_URI", "MLFLOW_TRACKING_URI"))
    mlflow_username: SecretStr | None = Field(None, description="MLflow basic-auth user (stack up --host)")
    mlflow_password: SecretStr | None = Field(None, description="MLflow basic-auth password (stack up --host)")
    ray_address: str = Field("http://127.0.0.1:8265", description="Ray dashboard / Jobs API")
    ray_num_cpus: int = Field(4, description="logical CPUs of the embedded Ray head")
    decode_cache_share: float = Field(0.2, ge=0, le=0.8, description="share of the Ray cluster's object store "
                                      "memory a training split's decoded pixels may take to be decoded once and "
                                      "kept there (0: decode the PNGs on every read; docs/training.md)")
    serve_url: str = Field("http://127.0.0.1:8000", description="Ray Serve HTTP endpoint")
    serve_api_key: SecretStr | None = Field(None, description="required on /enhance when set")
    serve_ingress: Literal["auto", "haproxy", "proxy"] = Field(
        "auto", description="HTTP ingress of the embedded Ray head: haproxy (Ray Serve's HAProxy, straight to "
                            "each replica), proxy (Ray Serve's Python proxy), auto (haproxy where installed)")

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> Settings:
        # One key alone would silently fall back to the generated pair and hide the mistake.
        if bool(self.s3_access_key) != bool(self.s3_secret_key):
            have, lack = (("secret", "access") if self.s3_secret_key else ("access", "secret"))
            names = {"access": "IMG2IMG_S3_ACCESS_KEY or AWS_ACCESS_KEY_ID",
                     "secret": "IMG2IMG_S3_SECRET_KEY or AWS_SECRET_ACCESS_KEY"}
            raise ValueError(f"the S3 {have} key is set but the {lack} key is not: set {names[lack]} too, "
                             "or unset both to use the pair `img2img stack up` generated")
        if bool(self.mlflow_username) != bool(self.mlflow_password):
            have, lack = (("password", "username") if self.mlflow_password else ("username", "password"))
            raise ValueError(f"the MLflow {have} is set but the {lack} is not: set IMG2IMG_MLFLOW_{lack.upper()} "
                             "too, or unset both to use the pair `img2img stack up --host` generated")
        return self

    # ---- derived values -----------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def s3_hostport(self) -> str:
        """`host:port` whatever form the endpoint was given in."""
        ep = self.s3_endpoint
        return urlparse(ep).netloc if "://" in ep else ep.rstrip("/")

    @property
    def s3_is_secure(self) -> bool:
        return self.s3_endpoint.startswith("https://") or self.s3_secure

    @property
    def s3_url(self) -> str:
        return f"{'https' if self.s3_is_secure else 'http'}://{self.s3_hostport}"

    def s3_keys(self) -> tuple[str, str] | None:
        """(access, secret) from the environment, else the pair `stack up` generated."""
        if self.s3_access_key and self.s3_secret_key:
            return self.s3_access_key.get_secret_value(), self.s3_secret_key.get_secret_value()
        path = self.state_path / CREDENTIALS_FILE
        if path.exists():
            data = json.loads(path.read_text())
            return data["access_key"], data["secret_key"]
        return None

    def mlflow_credentials(self) -> tuple[str, str] | None:
        """(username, password) for an MLflow server with basic auth: from the environment
        (IMG2IMG_MLFLOW_USERNAME/PASSWORD), else the pair
        `stack up --host` generated in the state dir's credentials file; None when neither has one."""
        if self.mlflow_username and self.mlflow_password:
            return self.mlflow_username.get_secret_value(), self.mlflow_password.get_secret_value()
        path = self.state_path / CREDENTIALS_FILE
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("mlflow_username") and data.get("mlflow_password"):
                return data["mlflow_username"], data["mlflow_password"]
        return None

    def apply_mlflow_env(self) -> None:
        """Put `mlflow_credentials()` into this process's environment as MLFLOW_TRACKING_USERNAME /
        MLFLOW_TRACKING_PASSWORD, which MLflow's REST client sends as basic auth (a server without
        auth ignores them). Nothing changes when there are none."""
        creds = self.mlflow_credentials()
        if creds:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = creds

    def exposed_host(self) -> str | None:
        """The address `img2img stack up --host` exposed this state dir's stack on, as recorded
        in its stack.json while the stack runs; None for a stack on loopback only."""
        path = self.state_path / "stack.json"
        try:
            return json.loads(path.read_text()).get("host") or None
        except (OSError, ValueError, AttributeError):
            return None

    def exposed(self, url_or_hostport: str) -> str:
        """`url_or_hostport` with its host replaced by the exposed host when it names loopback and
        the stack is exposed (how other machines reach the same service); else unchanged."""
        host = self.exposed_host()
        if not host or not self.is_local(url_or_hostport):
            return url_or_hostport
        if "://" in url_or_hostport:
            parsed = urlparse(url_or_hostport)
            return parsed._replace(netloc=f"{host}:{parsed.port}" if parsed.port else host).geturl()
        return f"{host}:{self.port_of(url_or_hostport)}"

    def is_local(self, url_or_hostport: str) -> bool:
        host = urlparse(url_or_hostport if "://" in url_or_hostport else f"x://{url_or_hostport}").hostname
        return host in LOCAL_HOSTS

    def port_of(self, url_or_hostport: str) -> int:
        return urlparse(url_or_hostport if "://" in url_or_hostport else f"x://{url_or_hostport}").port

    @property
    def ray_token_path(self) -> Path:
        return self.state_path / "ray" / "auth_token"

    def ray_env(self) -> dict[str, str]:
        """Environment a Ray client needs to talk to our cluster (token auth stays on), with usage
        stats off in the client as the stack starts Ray (`--disable-usage-stats`): else a driver
        started here polls a Prometheus at localhost:9090 every 10 s for Ray Data's usage report."""
        env = {"RAY_USAGE_STATS_ENABLED": "0"}
        if "RAY_AUTH_TOKEN" not in os.environ and self.ray_token_path.exists():
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = str(self.ray_token_path)
        return env

    def apply_ray_env(self) -> None:
        """Put `ray_env()` into this process's environment. Ray caches its auth mode when it is
        first imported, so refresh that cache too (what Ray itself does when it enables tokens)."""
        os.environ.update(self.ray_env())
        if "ray._raylet" in sys.modules:
            sys.modules["ray._raylet"].Config.initialize("")

    def job_env(self) -> dict[str, str]:
        """The non-secret settings every process on the cluster needs to reach the stores (Ray
        workers, jobs): IMG2IMG_* variables (keys stay on the cluster: never put them here), and
        the Ray address its internals use when they look the cluster up with no address (else:
        "Found multiple active Ray instances" with two stacks side by side). On a stack exposed
        with `stack up --host ADDR`, the loopback addresses are given at ADDR, so that processes
        on every node reach the same services."""
        return {"IMG2IMG_S3_ENDPOINT": self.exposed(self.s3_endpoint),
                "IMG2IMG_S3_SECURE": str(self.s3_secure).lower(),
                "IMG2IMG_BUCKET": self.bucket, "IMG2IMG_MLFLOW_URI": self.exposed(self.mlflow_uri),
                "IMG2IMG_S3_MAX_ATTEMPTS": str(self.s3_max_attempts),
                "IMG2IMG_DECODE_CACHE_SHARE": str(self.decode_cache_share),
                "RAY_API_SERVER_ADDRESS": self.exposed(self.ray_address)}

    def ray_token_file(self) -> Path | None:
        """The file holding the token `ray_auth_headers` sends to the Ray dashboard / Jobs API
        (this stack's own, else RAY_AUTH_TOKEN_PATH's); None when RAY_AUTH_TOKEN gives the token
        itself or there is none."""
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if os.environ.get("RAY_AUTH_TOKEN"):
            return None
        if self.ray_token_path.exists():
            return self.ray_token_path
        return Path(path) if path and os.path.exists(path) else None

    def ray_auth_headers(self) -> dict[str, str]:
        token = os.environ.get("RAY_AUTH_TOKEN")
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if not token and self.ray_token_path.exists():
            token = self.ray_token_path.read_text().strip()
        elif not token and path and os.path.exists(path):
            token = open(path).read().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def get_settings(**overrides) -> Settings:
    """The settings from the environment and `.env`, with the MLflow credentials (if any) put into
    this process's environment for MLflow's client (`Settings.apply_mlflow_env`); a bad value
    raises Img2ImgError naming it."""
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"IMG2IMG_{where.upper()}: {msg}" if where else msg)
        raise Img2ImgError("configuration error: " + "; ".join(problems)) from None
    settings.apply_mlflow_env()
    return settings


def _apply_mlflow_env_on_import() -> None:
    """Every process of ours imports this module (CLIs, job drivers, Ray Train workers, Serve
    replicas), and some of them call MLflow without building settings first (a worker's run
    logger, a replica loading its model): the credentials of an MLflow with basic auth reach
    them here, read from the state dir like the S3 keys. A bad configuration is reported by
    `get_settings` where it is used, not here."""
    try:
        Settings().apply_mlflow_env()
    except (ValidationError, OSError, ValueError, KeyError):
        pass
    # MLflow's client writes "View run ... at: URL" to stdout whenever it ends a run (`jobs status`
    # ending a run whose driver was lost, `jobs stop`): that would break `--json` output and
    # pipes. Our commands say where a run is themselves.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


_apply_mlflow_env_on_import()
