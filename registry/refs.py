"""The model-reference grammar, in one place: every command that names a registered model (eval,
models export, serve deploy/reload, enhance --local, train --init-from, the gate) parses it here
and resolves it here, so each accepts the same references and refuses the same mistakes with the
same one-line errors.

    NAME@alias      the version the alias points at (e.g. photos@champion)
    NAME/VERSION    that version number (e.g. photos/3; a NAME may itself hold "/": my/photos/3)
    NAME            NAME@champion
    models:/REF     the same, MLflow's URI form

A reference with a "/" names a version: the part after the last "/" must be a number.
"""

from __future__ import annotations

from typing import NamedTuple

from cluster.errors import Img2ImgError, no_registered_model
from cluster.services import bound_mlflow_calls, require

CHAMPION = "champion"
GRAMMAR = "NAME, NAME@alias or NAME/VERSION"


class ModelRef(NamedTuple):
    """A parsed reference: `version` (digits) or `alias` is set, never both."""

    name: str
    version: str | None
    alias: str | None


def parse_ref(text: str) -> ModelRef:
    """`NAME@alias` -> (NAME, None, alias); `NAME/VERSION` -> (NAME, VERSION, None); `NAME` ->
    (NAME, None, "champion"). Raises Img2ImgError naming the grammar for anything else (an empty
    name, alias or version, a version that is not a number)."""
    ref = (text or "").removeprefix("models:/")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if name and alias and "@" not in alias:
            return ModelRef(name, None, alias)
    elif "/" in ref:
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return ModelRef(name, str(int(version)), None)
    elif ref:
        return ModelRef(ref, None, CHAMPION)
    raise Img2ImgError(f"expected a registered model as {GRAMMAR} (e.g. photos, photos@champion, photos/3), "
                       f"got {text!r}")


def parse_name(text: str, command: str) -> str:
    """A command that acts on a whole registered model (`models rollback`, `models promote`) ->
    its NAME. Raises Img2ImgError for a reference naming a version or alias, saying so."""
    ref = parse_ref(text)
    if ref.version is not None or "@" in text:
        raise Img2ImgError(f"{command} takes a registered model NAME, not a version or alias; got {text!r} "
                           f"(e.g. {command} {ref.name})")
    return ref.name


def resolve(tracking_uri: str, text: str) -> tuple[str, str]:
    """A reference (see the module docstring) -> (name, concrete version), looked up in the MLflow
    registry at `tracking_uri`.

    Raises Img2ImgError, before contacting MLflow for a malformed reference, then saying which
    part is missing: the model (with the closest names), the version (with those it has), or the
    alias (with the command that sets `champion`), or that MLflow is unreachable or failing."""
    # deferred: every command parses its reference at start-up, and mlflow takes ~1 s to import
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, version, alias = parse_ref(text)
    bound_mlflow_calls()
    require("MLflow", tracking_uri, "/health")
    client = MlflowClient(tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE") or "Max retries" in str(e):
            raise Img2ImgError(f"MLflow at {tracking_uri} failed while looking up {text!r} "
                               f"({e.error_code}); is it healthy? (`img2img stack status`)") from None
        raise no_registered_model(name, (m.name for m in client.search_registered_models())) from None
    if version is not None:
        have = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
        if version not in have:
            raise Img2ImgError(f"model {name!r} has no version {version!r} (it has: {', '.join(have) or 'none'})")
        return name, version
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        if alias == CHAMPION:
            raise Img2ImgError(f"model {name!r} has no champion yet; promote a version with: "
                               f"img2img models promote {name} --best")
        raise Img2ImgError(f"model {name!r} has no alias {alias!r} (its aliases: {', '.join(sorted(aliases)) or 'none'})")
    return name, str(aliases[alias])
