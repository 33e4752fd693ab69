"""The recipe "Adding a serving knob" (docs/architecture.md): one field on `ReplicaOptions` (or
`Scaling`) is an option of `img2img serve deploy`, a key of the deployment the `deploy()` call
sends, and a parsed option of the replica; a bad value is one `Error:` line naming the flag."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from cluster.errors import Img2ImgError
from img2img_cli.app import UserErrorsOnce
from img2img_cli.commands.serve import takes_options
from serving.configs import app_config
from serving.options import Flag, ReplicaOptions, Scaling, parse_user_config

SERVED = {"model_name": "photos", "model_version": "3", "tracking_uri": "http://127.0.0.1:5000"}


class WithSharpen(ReplicaOptions):
    """The recipe's one field: a replica option in its own unit on the command line."""

    sharpen_ms: Annotated[float, Field(ge=0), Flag("--sharpen-ms", "extra sharpening time", scale=1000)] = 0.0


class WithWarmReplicas(Scaling):
    """The same recipe for a scaling field, placed in the deployment's autoscaling_config."""

    initial_replicas: Annotated[int | None, Field(ge=1), Flag(
        "--initial-replicas", "replicas at start", section="autoscaling_config")] = None


def command(replica_type: type[ReplicaOptions], scaling_type: type[Scaling], seen: dict) -> typer.Typer:
    """A `serve deploy` with the given types under a root that catches user errors as `img2img`'s
    does: what it would send, recorded in `seen`."""
    app = typer.Typer(cls=UserErrorsOnce)

    @app.callback()
    def root():
        """A root group, as `img2img` is."""

    @app.command()
    @takes_options(scaling_type, replica_type)
    def deploy(model: str = typer.Option(..., "--model"), **options):
        replica, scaling = replica_type.from_flags(options), scaling_type.from_flags(options)
        seen["app"] = app_config(SERVED, replica, scaling)

    return app


def test_one_replica_field_reaches_the_cli_the_deploy_config_and_the_replica():
    seen: dict = {}
    app = command(WithSharpen, WithWarmReplicas, seen)
    assert "--sharpen-ms" in CliRunner().invoke(app, ["deploy", "--help"], env={"COLUMNS": "200"}).output
    r = CliRunner().invoke(app, ["deploy", "--model", "photos@champion", "--sharpen-ms", "250", "--initial-replicas", "2"])
    assert r.exit_code == 0, r.output
    (deployment,) = seen["app"]["deployments"]
    assert deployment["user_config"]["sharpen_ms"] == 0.25  # seconds in the config, ms on the command line
    assert deployment["autoscaling_config"]["initial_replicas"] == 2
    served, options = parse_user_config(deployment["user_config"], WithSharpen)
    assert options.sharpen_ms == 0.25 and options.tile == ReplicaOptions().tile and served.model_version == "3"


def test_the_new_field_is_checked_once_in_the_type_on_every_path():
    seen: dict = {}
    r = CliRunner().invoke(command(WithSharpen, Scaling, seen), ["deploy", "--model", "m", "--sharpen-ms", "-5"])
    assert r.exit_code == 1 and r.output.strip() == "Error: --sharpen-ms must be >= 0, got -5", r.output
    assert "app" not in seen  # refused before any deploy config was built
    with pytest.raises(Img2ImgError, match="--sharpen-ms must be >= 0"):
        parse_user_config({**SERVED, "sharpen_ms": -1}, WithSharpen)  # a hand-written config, in the replica
    with pytest.raises(Img2ImgError, match="unknown option 'sharpen_ms'"):  # the stock type does not know it
        parse_user_config({**SERVED, "sharpen_ms": 0.1})


def test_the_stock_types_give_serve_deploy_every_option_once():
    from img2img_cli.app import app

    deploy = typer.main.get_command(app).commands["serve"].commands["deploy"]
    flags = [p.opts[0] for p in deploy.params if p.opts[0] != "--model"]
    want = [f.name for t in (Scaling, ReplicaOptions) for f in t.flags().values()]
    assert flags == want and len(set(flags)) == len(flags)
    assert {"--max-ongoing-requests", "--upscale-delay", "--downscale-delay", "--max-megapixels"} <= set(flags)
