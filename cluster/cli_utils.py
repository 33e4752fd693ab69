"""Shared CLI helpers: consoles, the user-error decorator, rich tables."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.table import Table

from cluster.errors import Img2ImgError

console = Console()
err_console = Console(stderr=True)

def user_errors() -> tuple[type[BaseException], ...]:
    from translator.config import ConfigError
    from translator.degrade import DegradationError

    return (Img2ImgError, ConfigError, DegradationError)


def handle_errors(fn):
    """Decorator for commands: user errors -> `Error: ...`, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as e:
            err_console.print(f"[bold red]Error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


