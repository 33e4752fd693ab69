"""One model-reference grammar for every command that names a registered model: `NAME@alias`,
`NAME/VERSION` and `NAME` (= NAME@champion) are accepted alike by each of them, and each refuses
a malformed reference with the same one line, before any service is contacted."""

from __future__ import annotations

import pytest
from PIL import Image

from cluster.errors import Img2ImgError
from registry.refs import parse_name, parse_ref

# Every address points at a closed port: the stack is DOWN.
DOWN = {"IMG2IMG_RAY_ADDRESS": "http://127.0.0.1:9", "IMG2IMG_MLFLOW_URI": "http://127.0.0.1:9",
        "IMG2IMG_S3_ENDPOINT": "127.0.0.1:9", "IMG2IMG_SERVE_URL": "http://127.0.0.1:9"}

# Each command's place for a reference; `files` is a folder holding one small image.
COMMANDS = {
    "eval": lambda ref, files: ["eval", ref, "--dataset", "d"],
    "models export": lambda ref, files: ["models", "export", ref, "-o", files / "out.onnx"],
    "serve deploy": lambda ref, files: ["serve", "deploy", "--model", ref],
    "serve reload": lambda ref, files: ["serve", "reload", "--model", ref],
    "enhance --local": lambda ref, files: ["enhance", files / "in.png", "--local", "--model", ref,
                                           "-o", files / "out"],
    "train --init-from": lambda ref, files: ["train", "--dataset", "d", "--init-from", ref],
}
# Commands acting on a whole registered model take its NAME only.
NAME_COMMANDS = {
    "models rollback": lambda name: ["models", "rollback", name],
    "models promote": lambda name: ["models", "promote", name, "--best"],
    "models set-eval": lambda name: ["models", "set-eval", name, "--dataset", "d"],
    "models ls": lambda name: ["models", "ls", name],
}
MALFORMED = ["photos@", "@champion", "photos/x", "photos/", "", "models:/", "photos@a@b"]
GOOD = ["photos", "photos@champion", "photos@staging", "photos/3", "my/photos/3", "models:/photos@champion"]


@pytest.fixture
def run(monkeypatch, tmp_path, cli):
    for key, value in DOWN.items():
        monkeypatch.setenv(key, value)
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    return lambda argv: cli(*argv)


@pytest.mark.parametrize("text, parsed", [
    ("photos", ("photos", None, "champion")),
    ("photos@champion", ("photos", None, "champion")),
    ("photos@staging", ("photos", None, "staging")),
    ("photos/3", ("photos", "3", None)),
    ("my/photos/3", ("my/photos", "3", None)),
    ("my/photos@champion", ("my/photos", None, "champion")),
    ("models:/photos/3", ("photos", "3", None)),
    ("models:/photos", ("photos", None, "champion")),
])
def test_the_grammar(text, parsed):
    assert parse_ref(text) == parsed


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_reference_names_the_grammar(text):
    with pytest.raises(Img2ImgError, match="expected a registered model as NAME, NAME@alias or NAME/VERSION"):
        parse_ref(text)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("text", MALFORMED)
def test_every_command_refuses_a_malformed_reference_with_the_same_line(run, tmp_path, command, text):
    r = run(COMMANDS[command](text, tmp_path))
    assert r.exit_code == 1, r.output
    assert r.output == ("Error: expected a registered model as NAME, NAME@alias or NAME/VERSION "
                        f"(e.g. photos, photos@champion, photos/3), got {text!r}\n")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("text", GOOD)
def test_every_command_accepts_every_form(run, tmp_path, command, text):
    """Accepted: the command goes on to the services (all down here) and says so in one line."""
    r = run(COMMANDS[command](text, tmp_path))
    lines = [line for line in r.output.splitlines() if line.strip()]  # eval's progress bar leaves a blank line
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: cannot reach "), r.output


@pytest.mark.parametrize("command", NAME_COMMANDS)
@pytest.mark.parametrize("text", ["photos/3", "photos@champion"])
def test_whole_model_commands_refuse_a_version_or_alias(run, command, text):
    r = run(NAME_COMMANDS[command](text))
    assert r.exit_code == 1
    assert r.output == (f"Error: img2img {command} takes a registered model NAME, not a version or alias; "
                        f"got {text!r} (e.g. img2img {command} photos)\n")


@pytest.mark.parametrize("command", NAME_COMMANDS)
def test_whole_model_commands_accept_a_name(run, command):
    r = run(NAME_COMMANDS[command]("photos"))
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: cannot reach "), r.output
    assert parse_name("my-photos", "img2img models rollback") == "my-photos"
