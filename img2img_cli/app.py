"""The root `img2img` command: mounts the command groups of `img2img_cli/commands/` (the
composition root: the only place that sees `jobs`, `serving` and `registry` together).

User mistakes (`Img2ImgError` and the translator's validation errors) are caught once, here, for
every command: one `Error: ...` line and exit code 1 (Ctrl-C: `Interrupted.`, 130). Nothing else
is caught, so real bugs keep their traceback.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version as package_version

import typer
import typer.core
import typer.rich_utils
from rich.markup import escape

from cluster.cli_utils import console, err_console
from cluster.errors import Img2ImgError
from cluster.services import bound_mlflow_calls
from img2img_cli.commands.batch import batch
from img2img_cli.commands.data import data_app
from img2img_cli.commands.demo import demo
from img2img_cli.commands.eval import eval_
from img2img_cli.commands.jobs import jobs_app
from img2img_cli.commands.models import models_app
from img2img_cli.commands.pipeline import pipeline_app
from img2img_cli.commands.serve import enhance, serve_app
from img2img_cli.commands.stack import stack_app
from img2img_cli.commands.train import train
from img2img_cli.commands.tune import tune
from translator.config import ConfigError
from translator.degrade import DegradationError

USER_ERRORS = (Img2ImgError, ConfigError, DegradationError)  # a user's mistake: one line, not a traceback


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

class UserErrorsOnce(typer.core.TyperGroup):
    """The root group: every command (sub-groups included) runs inside its `invoke`, so a user
    error raised anywhere below is turned into one `Error: ...` line here, once."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            err_console.print(f"[bold red]Error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="img2img",
    cls=UserErrorsOnce,
    help="Train, track and serve image-to-image translators on Ray, MLflow and S3.\n\n"
         "Start here: `img2img stack up`, then `img2img demo`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        console.print(f"img2img {package_version('img2img-platform')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail to stderr."),
):
    bound_mlflow_calls()  # interactive commands fail in seconds, not after minutes of MLflow retries
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # connection retries are reported by our own one-line errors
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)


app.add_typer(stack_app, name="stack")
app.add_typer(data_app, name="data")
app.command("train")(train)
app.command("tune")(tune)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command("eval")(eval_)
app.command("batch")(batch)
app.add_typer(serve_app, name="serve")
app.command("enhance")(enhance)
app.command("demo")(demo)
app.add_typer(pipeline_app, name="pipeline")

if __name__ == "__main__":
    sys.exit(app())
