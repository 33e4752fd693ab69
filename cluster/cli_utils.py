"""Shared CLI helpers: consoles, tables that never cut identifiers,
and `--json` output for scripts.

Every listing/status command prints through `print_table` (people) or `print_json` (scripts,
`--json`): ids, names, versions and URLs are never split across lines, at any terminal width and
in a pipe, so they can be copied and grepped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cluster.errors import Img2ImgError

# soft_wrap: messages (suggested commands, URLs) are never broken by inserted newlines; the
# terminal wraps them, so a copied command or URL is whole.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
for _c in (console, err_console):
    _c.size = (None, None)  # read COLUMNS / the terminal size at each print, not once at import

JSON_HELP = "print machine-readable JSON (stable keys) instead of a table"


def json_option() -> Any:
    """The `--json` flag every listing/status command takes."""
    return typer.Option(False, "--json", help=JSON_HELP)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _plain_len(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def table(title: str, columns: list[str], rows: list[list], ids: Iterable[str] | None = None,
          narrowest: bool = False) -> Table:
    """A rich table; the `ids` columns (default: the first) never wrap and are never shortened.

    Other columns wrap at spaces, folding only words longer than WORD_MAX; `narrowest`: each of
    them exactly as wide as its longest word (up to WORD_MAX), for a table that cannot fit anyway.
    """
    ids = set(columns[:1] if ids is None else ids)
    t = Table(title=title, title_justify="left")
    cells = [[_cell(v) for v in r] for r in rows]
    for i, c in enumerate(columns):
        if c in ids:
            width = max([len(c), *(_plain_len(r[i]) for r in cells)])
            t.add_column(c, no_wrap=True, overflow="ignore", min_width=width)
        else:  # whole words: a number or a date is not split inside unless longer than WORD_MAX
            word = _longest_word([c, *(r[i] for r in cells)])
            t.add_column(c, overflow="fold", min_width=word, width=word if narrowest else None)
    for r in cells:
        t.add_row(*r)
    return t


WORD_MAX = 12  # longest word kept whole in a wrapping column (a date, a number, a short name)


def _longest_word(values: Iterable[str]) -> int:
    return min(max((len(w) for v in values for w in Text.from_markup(v).plain.split()), default=1), WORD_MAX)


def _needed_width(columns: list[str], cells: list[list[str]], ids: set[str]) -> int:
    """Narrowest width at which the id columns stay whole and other columns keep whole words."""
    total = len(columns) + 1  # vertical rules
    for i, c in enumerate(columns):
        values = [c, *(r[i] for r in cells)]
        if c in ids:
            total += max(_plain_len(v) for v in values) + 2
        else:
            total += _longest_word(values) + 2
    return total


def print_table(title: str, columns: list[str], rows: Sequence[Sequence], ids: Iterable[str] | None = None) -> None:
    """Print a table for people. In a pipe every row is one line (grep finds it); in a terminal
    the id columns (default: the first) stay whole, other columns wrap; if even that does not
    fit, the table is drawn wider than the terminal rather than cutting an identifier."""
    ids = set(columns[:1] if ids is None else ids)
    rows = [list(r) for r in rows]
    t = table(title, columns, rows, ids)
    if console.is_terminal:
        width = max(console.width, _needed_width(columns, [[_cell(v) for v in r] for r in rows], ids))
    else:
        width = max(console.width, console.measure(t, options=console.options.update_width(10_000)).maximum)
    if width == console.width:
        console.print(t, soft_wrap=False)
        return
    if console.is_terminal:  # too wide for the terminal: the narrowest layout that keeps words whole
        t = table(title, columns, rows, ids, narrowest=True)
    wide = Console(file=console.file, width=width, force_terminal=console.is_terminal,
                   color_system=console.color_system, soft_wrap=False)
    wide.print(t)


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout (no colour, no wrapping, for scripts)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def records(keys: Sequence[str], rows: Sequence[Sequence]) -> list[dict[str, Any]]:
    """Rows -> list of dicts with the given stable keys (for `--json`)."""
    return [dict(zip(keys, r)) for r in rows]


# ---- output paths: checked before any work starts ------------------------------------------
def _writable_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise Img2ImgError(f"{what}: folder {folder} does not exist; create it first or choose another path")
    if not folder.is_dir():
        raise Img2ImgError(f"{what}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Img2ImgError(f"{what}: folder {folder} is not writable; choose another path")


def check_output_file(path, what: str, suffixes: Sequence[str] = ()) -> None:
    """Raise Img2ImgError unless `path` can be written: its folder exists and is writable, it is
    not a folder, and (if `suffixes` are given) its suffix is one of them."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise Img2ImgError(f"{what}: {path} is a folder; give a file name such as {path / 'preview.png'}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise Img2ImgError(f"{what}: {path.name} must end in {' or '.join(suffixes)}")
    _writable_folder(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise Img2ImgError(f"{what}: {path} exists and is not writable")


def check_output_dir(path, what: str) -> None:
    """Raise Img2ImgError unless `path` is (or can be created as) a writable folder: the nearest
    existing ancestor must be a writable folder."""
    path = Path(path).expanduser()
    if path.exists():
        _writable_folder(path, what)
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise Img2ImgError(f"{what}: cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Img2ImgError(f"{what}: cannot create {path}: folder {parent} is not writable")

