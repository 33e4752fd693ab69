"""The root `img2img` command: mounts each package's Typer sub-app (plain imports: this is the
only module that depends on every package).

User mistakes (`Img2ImgError` and the translator's validation errors) print as one
`Error: ...` line with exit code 1; nothing else is caught, so real bugs keep their traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
import typer.core
import typer.rich_utils
from rich.markup import escape

from cluster.cli_utils import console, err_console
from cluster.stack_cli import stack_app
from img2img_cli.rollback import register as register_rollback
from img2img_demo.cli import register as register_demo
from jobs.cli import register as register_jobs
from jobs.models_cli import models_app
from serving.cli import register as register_serving


def _no_flag_type(display_type_rich):
    """Typer 0.2x labels every flag `<bool>` in `--help`; a flag takes no value, so show none."""

    def patched(self, ctx):
        return None if getattr(self, "is_flag", False) else display_type_rich(self, ctx)

    return patched


typer.core.TyperOption.display_type_rich = _no_flag_type(typer.core.TyperOption.display_type_rich)


def _one_line_usage_error(error) -> None:
    """Usage mistakes of every command (`--workers abc`, a missing option, an unknown command)
    print as one `Error: ...` line naming the command's --help, not Typer's boxed panel; Typer
    then exits 2."""
    if type(error).__name__ == "NoArgsIsHelpError":  # the help was printed: nothing to add
        return
    ctx = getattr(error, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = " ".join(error.format_message().split())  # click wraps some messages over lines
    err_console.print(f"[bold red]Error:[/] {escape(message)}{where}", highlight=False, soft_wrap=True)


typer.rich_utils.rich_format_error = _one_line_usage_error

app = typer.Typer(
    name="img2img",
    help="Train, track and serve image-to-image translators on Ray, MLflow and S3.\n\n"
         "Start here: `img2img stack up`, then `img2img demo`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        from importlib.metadata import version

        console.print(f"img2img {version('img2img-platform')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail to stderr."),
):
    from cluster.services import bound_mlflow_calls

    bound_mlflow_calls()  # interactive commands fail in seconds, not after minutes of MLflow retries
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # connection retries are reported by our own one-line errors
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)


app.add_typer(stack_app, name="stack")
register_jobs(app)
register_rollback(models_app)  # composes the registry and serving: mounted here, not by jobs/
register_serving(app)
register_demo(app)

if __name__ == "__main__":
    sys.exit(app())
