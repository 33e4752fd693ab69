"""`img2img models export`: a registered generator -> ONNX or TorchScript file, parity-checked
against PyTorch (translator/export.py), then logged beside the model in the registry: the file
becomes an artifact of the version's run and the version gets the tags `export_<format>`
(artifact path) and `export_<format>_max_abs_diff`, so `serve deploy --runtime onnx` finds it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.settings import Settings


def resolve(settings: Settings, model: str) -> tuple[str, str]:
    """`NAME@alias`, `NAME/VERSION` or `NAME` (= NAME@champion) -> (name, version); the same
    wording as serving's resolve for a missing model, version or alias (jobs cannot import it)."""
    from mlflow.exceptions import MlflowException

    from cluster.errors import no_registered_model
    from jobs.registry import alias_version, client

    c = client(settings)
    model = model.removeprefix("models:/")
    name, sep, version = model.partition("/")
    name, _, alias = name.partition("@")
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise no_registered_model(name, (m.name for m in c.search_registered_models())) from None
    if sep:
        try:
            c.get_model_version(name, version)
        except MlflowException:
            raise Img2ImgError(f"model {name!r} has no version {version!r}") from None
        return name, version
    alias = alias or "champion"
    found = alias_version(settings, name, alias)
    if found is None:
        hint = f"; promote a version with: img2img models promote {name} --best" if alias == "champion" else ""
        raise Img2ImgError(f"model {name!r} has no alias {alias!r}{hint}")
    return name, found


def export_model(settings: Settings, model: str, fmt: str = "onnx", out: Path | None = None,
                 tolerance: float | None = None, log_to_registry: bool = True) -> dict:
    """Export `model` (see `resolve`) to `out` (default ./NAME-vVERSION.onnx|.pt) and log it.

    -> {"name", "version", "path", "format", "max_abs_diff", "per_size", "tolerance", "artifact"}.
    Raises Img2ImgError for an unknown model or format, a failed export, or a parity
    difference above `tolerance` (nothing is written to `out` or the registry then).
    """
    import mlflow.pytorch

    from jobs.registry import client
    from translator import export

    if fmt not in export.FORMATS:
        raise Img2ImgError(f"--format must be {' or '.join(export.FORMATS)}, got {fmt!r}")
    name, version = resolve(settings, model)
    c = client(settings)
    mv = c.get_model_version(name, version)
    tags = dict(mv.tags or {})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    generator = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    multiple = int(tags.get("multiple", getattr(generator, "multiple", 1)))
    out = Path(out) if out else Path(f"{name}-v{version}{export.SUFFIX[fmt]}")
    if out.is_dir():
        out = out / f"{name}-v{version}{export.SUFFIX[fmt]}"
    meta = {"model": name, "version": version, "variant": tags.get("variant", "unknown")}
    with tempfile.TemporaryDirectory() as d:
        staged = Path(d) / out.name  # written and checked here first: no half-written or unchecked file at `out`
        try:
            result = export.export(generator, fmt, staged, multiple, meta,
                                   export.TOLERANCE if tolerance is None else tolerance)
        except export.ExportError as e:
            raise Img2ImgError(str(e)) from None
        artifact = None
        if log_to_registry:
            c.log_artifact(mv.run_id, str(staged), "export")
            artifact = f"export/{staged.name}"
            c.set_model_version_tag(name, version, f"export_{fmt}", artifact)
            c.set_model_version_tag(name, version, f"export_{fmt}_max_abs_diff", f"{result.max_abs_diff:.3g}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out)
    return {"name": name, "version": version, "path": out, "format": fmt, "max_abs_diff": result.max_abs_diff,
            "per_size": result.per_size, "tolerance": result.tolerance, "artifact": artifact,
            "run_id": mv.run_id}
