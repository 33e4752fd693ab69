"""`img2img enhance --local`: the registered model in this process, no Serve involved."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from cluster.errors import Img2ImgError
from cluster.files import make_output_dir, write_atomic
from cluster.settings import Settings
from registry.loading import load
from registry.refs import resolve
from serving.client import Outcome
from serving.inputs import check_outputs, output_path, unique_files
from serving.options import DEFAULTS, RUNTIMES
from translator import codec
from translator.allocator import retain_freed_memory
from translator.codec import over_pixel_limit


def too_large(files: list[Path], max_pixels: int, command: str) -> dict[Path, str]:
    """{file: refusal} for the files whose header says more than `max_pixels` pixels (width x
    height, read without decoding a pixel), each refusal saying how to raise the limit with
    `command`. Files that cannot be opened are left to the decoder to report."""
    refused = {}
    for src in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
                with Image.open(src) as img:
                    size = img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
        refusal = over_pixel_limit(*size, max_pixels, command)
        if refusal:
            refused[src] = refusal
    return refused


def enhance_locally(settings: Settings, model: str, files: list[Path], out_dir: Path, fmt: str = "png",
                    on_done=lambda o: None, max_pixels: int = DEFAULTS.max_pixels, direction: str = "AtoB",
                    runtime: str = DEFAULTS.runtime, threads: int | None = None,
                    root: Path | None = None) -> list[Outcome]:
    """Enhance `files` into `out_dir` (keeping their folders relative to `root`:
    serving.inputs.output_path) with the registered `model` on `runtime` (auto | torch | onnx):
    the same outputs as the endpoint (bit depth, alpha, ICC profile, EXIF kept), one Outcome per
    file, in order. Images over `max_pixels` fail from their header, before the model is loaded
    (not at all when no image is left). Raises Img2ImgError before any file when MLflow is
    unreachable, the model is unknown, it does not offer `direction`, the runtime options are
    wrong, or two files would write one output."""
    if fmt.lower() not in codec.FORMATS:
        raise Img2ImgError(f"unknown format {fmt!r}: use png, jpeg, webp or tiff")
    if runtime not in RUNTIMES:
        raise Img2ImgError(f"--runtime must be {' or '.join(RUNTIMES)}, got {runtime!r}")
    if threads is not None and threads < 1:
        raise Img2ImgError("--threads must be >= 1")
    check_outputs(files, out_dir, fmt, root)
    files = unique_files(files)
    name, version = resolve(settings.mlflow_uri, model)
    refused = too_large(files, max_pixels, f"img2img enhance --local --model {model}")
    done: dict[Path, Outcome] = {}
    for src, refusal in refused.items():  # reported at once, not after the model has loaded
        done[src] = Outcome(src, None, refusal)
        on_done(done[src])
    todo = [f for f in files if f not in refused]
    if todo:
        retain_freed_memory()  # as a replica does: see translator/allocator.py
        loaded = load(settings.mlflow_uri, name, version, runtime=runtime, threads=threads)
        loaded.net(direction)  # refuse a direction the model lacks before touching any file
    for src in todo:
        try:
            decoded = codec.decode(src.read_bytes(), max_pixels, f"img2img enhance --local --model {model}",
                                   loaded.descriptor.scale)  # a super-resolution model's output is checked too
            codec.check_output(fmt, decoded)
            data, _ = codec.encode(loaded.enhance(decoded.tensor, precise=decoded.high_bit, direction=direction),
                                   decoded, fmt)
            dest = output_path(src, out_dir, fmt, root)
            make_output_dir(dest.parent)
            write_atomic(dest, data)
            frames = decoded.frames
            outcome = Outcome(src, dest, None, f"{name} v{version}",
                              note=f"first frame of {frames}" if frames > 1 else "")
        except (codec.RequestError, Img2ImgError, OSError) as e:
            outcome = Outcome(src, None, getattr(e, "message", str(e)))
        done[src] = outcome
        on_done(outcome)
    return [done[f] for f in files]
