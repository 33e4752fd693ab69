"""Sub-apps of `jobs/` mounted on the root `img2img` command."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from jobs.data_cli import data_app

    app.add_typer(data_app, name="data")
