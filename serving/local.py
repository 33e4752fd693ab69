"""`img2img enhance --local`: the registered model in this process, no Serve involved."""

from __future__ import annotations

from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.files import make_output_dir, write_atomic
from cluster.settings import Settings
from serving import codec
from serving.client import Outcome, check_outputs, output_path, unique_files
from serving.model import load, resolve
from serving.options import DEFAULTS
from translator.allocator import retain_freed_memory


def enhance_locally(settings: Settings, model: str, files: list[Path], out_dir: Path, fmt: str = "png",
                    on_done=lambda o: None, max_pixels: int = DEFAULTS.max_pixels, direction: str = "AtoB",
                    runtime: str = DEFAULTS.runtime, threads: int | None = None) -> list[Outcome]:
    """Enhance `files` into `out_dir` with the registered `model` on `runtime` (auto | torch | onnx):
    the same outputs as the endpoint (bit depth, alpha, ICC profile, EXIF kept), one Outcome per file.
    Raises Img2ImgError before any file when MLflow is unreachable, the model is unknown, it does
    not offer `direction`, the runtime options are wrong, or two files would write one output."""
    from serving.options import RUNTIMES

    if fmt.lower() not in codec.FORMATS:
        raise Img2ImgError(f"unknown format {fmt!r}: use png, jpeg, webp or tiff")
    if runtime not in RUNTIMES:
        raise Img2ImgError(f"--runtime must be {' or '.join(RUNTIMES)}, got {runtime!r}")
    if threads is not None and threads < 1:
        raise Img2ImgError("--threads must be >= 1")
    check_outputs(files, out_dir, fmt)
    files = unique_files(files)
    name, version = resolve(settings.mlflow_uri, model)
    retain_freed_memory()  # as a replica does: see translator/allocator.py
    loaded = load(settings.mlflow_uri, name, version, runtime=runtime, threads=threads)
    loaded.net(direction)  # refuse a direction the model lacks before touching any file
    make_output_dir(out_dir)
    results = []
    for src in files:
        try:
            decoded = codec.decode(src.read_bytes(), max_pixels)
            codec.check_output(fmt, decoded)
            data, _ = codec.encode(loaded.enhance(decoded.tensor, precise=decoded.high_bit, direction=direction),
                                   decoded, fmt)
            dest = output_path(src, out_dir, fmt)
            write_atomic(dest, data)
            frames = decoded.frames
            outcome = Outcome(src, dest, None, f"{name} v{version}",
                              note=f"first frame of {frames}" if frames > 1 else "")
        except (codec.RequestError, OSError) as e:
            outcome = Outcome(src, None, getattr(e, "message", str(e)))
        on_done(outcome)
        results.append(outcome)
    return results
