"""`img2img models export`: a registered generator -> ONNX or TorchScript file, parity-checked
against PyTorch (translator/export.py), then logged beside the model in the registry: the file
becomes an artifact of the version's run and the version gets the tags `export_<format>`
(artifact path) and `export_<format>_max_abs_diff`, so `serve deploy --runtime onnx` finds it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow.pytorch

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from registry import refs
from registry.models import client
from translator import export
from translator.descriptor import GeneratorDescriptor


def export_model(settings: Settings, model: str, fmt: str = "onnx", out: Path | None = None,
                 tolerance: float | None = None, log_to_registry: bool = True) -> dict:
    """Export `model` (a reference: `registry.refs`) to `out` (default ./NAME-vVERSION.onnx|.pt) and log it.

    -> {"name", "version", "path", "format", "max_abs_diff", "per_size", "tolerance", "artifact"}.
    Raises Img2ImgError for an unknown model or format, a failed export, or a parity
    difference above `tolerance` (nothing is written to `out` or the registry then).
    """
    if fmt not in export.FORMATS:
        raise Img2ImgError(f"--format must be {' or '.join(export.FORMATS)}, got {fmt!r}")
    name, version = refs.resolve(settings.mlflow_uri, model)
    c = client(settings)
    mv = c.get_model_version(name, version)
    tags = dict(mv.tags or {})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    generator = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    descriptor = GeneratorDescriptor.from_tags(tags, generator)
    out = Path(out) if out else Path(f"{name}-v{version}{export.SUFFIX[fmt]}")
    if out.is_dir():
        out = out / f"{name}-v{version}{export.SUFFIX[fmt]}"
    meta = {"model": name, "version": version, "variant": tags.get("variant", "unknown")}
    with tempfile.TemporaryDirectory() as d:
        staged = Path(d) / out.name  # written and checked here first: no half-written or unchecked file at `out`
        try:
            result = export.export(generator, fmt, staged, descriptor.size_multiple, meta,
                                   export.TOLERANCE if tolerance is None else tolerance, descriptor=descriptor)
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
