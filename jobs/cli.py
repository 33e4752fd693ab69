"""Sub-apps of `jobs/` mounted on the root `img2img` command."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from jobs.data_cli import data_app
    from jobs.eval_cli import eval_
    from jobs.models_cli import models_app
    from jobs.train_cli import jobs_app, train

    app.add_typer(data_app, name="data")
    app.command("train")(train)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.command("eval")(eval_)
