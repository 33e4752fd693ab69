"""Usage mistakes on every command print one `Error: ...` line and exit 2 (no boxed panel, no
traceback), before any service is contacted."""

from __future__ import annotations

import typing

import pytest
import typer
from typer.testing import CliRunner

from img2img_cli.app import app


def commands(group, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):  # a sub-group
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def numeric(param) -> bool:
    """An option that takes an int or a float (`int | None` too)."""
    kind = param.type_descriptor.annotation
    return not param.is_flag and param.opts[0].startswith("--") and (
        kind in (int, float) or bool(set(typing.get_args(kind)) & {int, float}))


ROOT = typer.main.get_command(app)
# Every option of every command that takes a number: a word where a number belongs.
NUMERIC = [(path, param.opts[0]) for path, cmd in commands(ROOT) for param in cmd.params
           if type(param).__name__ == "TyperOption" and numeric(param)]


def test_the_table_covers_every_command_with_a_number_option():
    covered = {" ".join(path) for path, _ in NUMERIC}
    assert {"train", "enhance", "serve deploy", "data ingest"} <= covered
    assert len(NUMERIC) >= 30


def one_line_usage_error(args: list[str]) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, (args, r.output)
    assert "╭" not in r.output and "Traceback" not in r.output
    return r.output


@pytest.mark.parametrize("path, option", NUMERIC, ids=[f"{' '.join(p)} {o}" for p, o in NUMERIC])
def test_a_word_for_a_number_is_one_error_line(path, option):
    out = one_line_usage_error([*path, option, "abc"])
    assert option in out and f"{' '.join(('img2img', *path))} --help" in out


@pytest.mark.parametrize("args, words", [
    (["serve", "deploy"], "Missing option '--model'"),
    (["trian"], "No such command 'trian'. Did you mean 'train'?"),
    (["data", "ingest", "x", "--sizee", "3"], "No such option: --sizee"),
    (["enhance"], "Missing argument 'files'"),
])
def test_other_usage_mistakes_are_one_error_line(args, words):
    assert words in one_line_usage_error(args)
