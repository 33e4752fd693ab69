"""`stack join|leave` and `train --stall-timeout`: bad input of every kind is one `Error:` line
and exit 1, before any Ray process starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from img2img_cli.app import app


@pytest.fixture
def node_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_STATE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("IMG2IMG_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("IMG2IMG_S3_SECRET_KEY", "s")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "empty").write_text("")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--head", "http://127.0.0.1:1", "--num-cpus", "0"], "--num-cpus must be at least 1"),
    (["--head", "http://127.0.0.1:1", "--gpus", "-1"], "--gpus at least 0"),
    (["--head", "127.0.0.1:8265"], "is not a URL"),
    (["--head", "ftp://host"], "is not a URL"),
    (["--head", "http://127.0.0.1:1"], "joining needs the head's token"),
    (["--head", "http://127.0.0.1:1", "--token-file", "{tmp}/missing"], "no such file"),
    (["--head", "http://127.0.0.1:1", "--token-file", "{tmp}/empty"], "is empty"),
    (["--head", "http://127.0.0.1:1", "--token-file", "{tmp}/token"], "cannot reach the Ray head"),
])
def test_join_refuses_bad_input_with_one_line(node_env, args, message):
    args = [a.replace("{tmp}", str(node_env)) for a in args]
    r = CliRunner().invoke(app, ["stack", "join", *args])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and message in r.output and "Traceback" not in r.output
    assert not (node_env / "node" / "ray").exists()  # nothing started, no token copied


def test_join_needs_the_store_keys(node_env, monkeypatch):
    monkeypatch.delenv("IMG2IMG_S3_ACCESS_KEY")
    r = CliRunner().invoke(app, ["stack", "join", "--head", "http://127.0.0.1:1", "--token-file",
                                 str(node_env / "token")])
    assert r.exit_code == 1 and "IMG2IMG_S3_ACCESS_KEY" in r.output


def test_leave_without_join_says_so(node_env):
    r = CliRunner().invoke(app, ["stack", "leave"])
    assert r.exit_code == 1 and "has not joined a head" in r.output


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_train_refuses_a_bad_stall_timeout(value):
    r = CliRunner().invoke(app, ["train", "--dataset", "x", "--stall-timeout", value])
    assert r.exit_code == 1 and "--stall-timeout must be" in r.output
