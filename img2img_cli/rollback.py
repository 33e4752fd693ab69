"""`img2img models rollback`: the registry's champion goes back one version, and so does the
endpoint serving it. Here, not in jobs/, because it composes the registry (jobs) and serving."""

from __future__ import annotations

import typer

from cluster.cli_utils import console, err_console, handle_errors
from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings


def reload_serving(settings: Settings, name: str, version: str) -> str:
    """Swap the endpoint to `name` v`version` when it serves another version of `name` (the
    `serve reload` path: new replicas' model loaded beside the old, no request dropped) -> one line
    saying what the endpoint serves now, or why it was left as it was. Raises Img2ImgError when
    the reload itself fails."""
    from serving.deploy import redeploy_model, status

    try:
        st = status(settings)
    except Img2ImgError as e:
        return f"The endpoint was not reloaded: could not reach it ({e})."
    if st is None:
        return "No endpoint is deployed; nothing to reload."
    if st["model"] != name:
        return f"The endpoint serves {st['model']} v{st['version']}, not {name}: left as it is."
    if str(st["version"]) == version:
        return f"The endpoint already serves {name} v{version}."
    try:
        redeploy_model(settings, f"{name}/{version}")
    except Img2ImgError as e:
        raise Img2ImgError(f"the endpoint still serves {name} v{st['version']}: reloading v{version} failed ({e}); "
                           f"retry with: img2img serve reload --model {name}@champion") from None
    return f"The endpoint now serves {name} v{version} (was v{st['version']}; swapped with no request dropped)."


@handle_errors
def rollback(name: str,
             no_reload: bool = typer.Option(False, "--no-reload", help="move the alias only; leave the endpoint "
                                                                        "serving what it serves")):
    """Move `champion` back to the previous champion (repeated rollbacks go further back); when the
    endpoint serves this model, it is reloaded to the restored champion without dropping a request.

    Example: `img2img models rollback photos`
    """
    from jobs.registry import rollback as do_rollback

    settings = get_settings()
    new, old, left = do_rollback(settings, name)
    console.print(f"{name}: champion rolled back to v{new}" + (f" (from v{old})" if old else ""))
    console.print("Former champions left to roll back to: " + (", ".join(f"v{v}" for v in reversed(left))
                                                               if left else "none"))
    if no_reload:
        err_console.print(f"The endpoint was not reloaded (--no-reload); swap it in with: "
                          f"img2img serve reload --model {name}@champion", highlight=False)
        return
    with console.status(f"reloading the endpoint to {name} v{new}"):
        line = reload_serving(settings, name, new)
    console.print(line, highlight=False)


def register(models_app: typer.Typer) -> None:
    models_app.command()(rollback)
