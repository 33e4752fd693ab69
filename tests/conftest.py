"""Shared fixtures. Integration fixtures start the real stack (SeaweedFS, MLflow, Ray head) on
free ports under a temp state dir, once per session, and stop it at the end."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

os.environ["COLUMNS"] = "200"  # CLI tables in full, whatever terminal runs the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env(state_dir: Path) -> dict[str, str]:
    return {
        "IMG2IMG_STATE_DIR": str(state_dir),
        "IMG2IMG_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
        "IMG2IMG_MLFLOW_URI": f"http://127.0.0.1:{free_port()}",
        "IMG2IMG_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "IMG2IMG_SERVE_URL": f"http://127.0.0.1:{free_port()}",
        "IMG2IMG_RAY_NUM_CPUS": "8",
    }


@pytest.fixture(autouse=True)
def ctrl_c_reaches_children():
    """Each test starts with Ctrl-C (SIGINT) handled as Python's default, never ignored: an ignored
    SIGINT is inherited through exec by every CLI a test starts, which then cannot be
    interrupted (and something the suite runs earlier, in-process, can leave it ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The embedded stack, started for real; yields its Settings."""
    from cluster.settings import get_settings
    from cluster.stack import Stack

    env = stack_env(tmp_path_factory.mktemp("stack") / "state")
    for key in ("IMG2IMG_S3_ACCESS_KEY", "IMG2IMG_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MLFLOW_TRACKING_URI", "IMG2IMG_SERVE_API_KEY", "RAY_ADDRESS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    settings = get_settings()
    st = Stack(settings)
    try:
        st.up()
        yield settings
    finally:
        st.down()


@pytest.fixture
def cli():
    """Run `img2img ARGS...` in-process; returns the click Result."""
    from typer.testing import CliRunner

    from img2img_cli.app import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run
