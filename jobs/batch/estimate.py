"""`img2img batch --dry-run`'s time estimate: the inputs' megapixels (read from their headers)
times a per-megapixel rate measured by an earlier batch job of the same model on the same
runtime and device (the metric `seconds_per_megapixel` of its MLflow run: worker seconds per
input megapixel, reading and writing included), divided by the workers."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from cluster.settings import Settings
from cluster.storage import Storage
from jobs.batch.plan import VIDEO, Item
from jobs.batch.spec import BatchSpec
from translator import video

log = logging.getLogger(__name__)
HEAD = 256 * 1024  # bytes read from an object in the store to find its size in pixels
SAMPLE = 200  # headers read from the store at most; the rest are extrapolated by their bytes


@dataclass
class Rate:
    """A measured rate: `seconds_per_mp` worker seconds per input megapixel, by the batch run
    `run_id` of version `version`."""

    seconds_per_mp: float
    run_id: str
    version: str


def measured_rate(settings: Settings, spec: BatchSpec) -> Rate | None:
    """The latest `seconds_per_megapixel` of a batch run of this model and version on this
    runtime, precision and device; of another version of the model when this one has none;
    None when no batch of the model ran there."""
    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        return None
    where = (f"tags.model_name = '{spec.model}' and params.runtime = '{spec.runtime}' and "
             f"params.precision = '{spec.precision}' and params.device = '{'gpu' if spec.use_gpu else 'cpu'}' and "
             "metrics.seconds_per_megapixel > 0")
    for extra in (f" and tags.model_version = '{spec.version}'", ""):
        runs = client.search_runs([exp.experiment_id], where + extra, order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            r = runs[0]
            return Rate(r.data.metrics["seconds_per_megapixel"], r.info.run_id, r.data.tags.get("model_version", "?"))
    return None


def _pixels(head: bytes, path: Path | None) -> int | None:
    """Pixels of an image from its first bytes (None when the header is not there), or of a
    local video (frames x width x height)."""
    if path is not None and path.suffix.lower() in video.VIDEO_SUFFIXES:
        try:
            info = video.probe(path)
        except video.VideoError:
            return None
        return len(info.pts) * info.width * info.height
    try:
        with Image.open(io.BytesIO(head)) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001 - any reader's failure means "unknown": extrapolated below
        return None


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEAD)


def megapixels(settings: Settings, spec: BatchSpec, items: list[Item], local_root: Path | None) -> tuple[float, int]:
    """-> (the megapixels of the items to process, how many were read from their headers).
    Local inputs are all read; in the store, SAMPLE headers at most, the others counted at the
    sample's megapixels per byte. Videos in the store are not read (counted as unknown)."""
    todo = [i for i in items if not i.reason]
    store = Storage(settings, bucket=spec.src_bucket) if local_root is None else None
    known: list[tuple[int, int]] = []  # (pixels, bytes)
    unknown_bytes = 0
    for n, item in enumerate(todo):
        path = None
        if local_root is not None:
            rel = item.key[len(spec.src_prefix):] if spec.src_prefix.endswith("/") else ""
            path = local_root / rel if rel else local_root
            head = b"" if item.fmt == VIDEO else _read_head(path)
        elif item.fmt == VIDEO or n >= SAMPLE:
            unknown_bytes += item.size if item.fmt != VIDEO else 0
            continue
        else:
            head = store.get_head(item.key, HEAD)
        px = _pixels(head, path)
        if px is None:
            unknown_bytes += item.size
        else:
            known.append((px, item.size))
    per_byte = sum(p for p, _ in known) / max(1, sum(b for _, b in known))
    return (sum(p for p, _ in known) + per_byte * unknown_bytes) / 1e6, len(known)


def estimate_line(settings: Settings, spec: BatchSpec, items: list[Item], local_root: Path | None) -> str:
    """One line for the dry run: the megapixels and the estimated time, saying where the rate
    comes from, or that no rate is recorded yet."""
    mp, read = megapixels(settings, spec, items, local_root)
    rate = measured_rate(settings, spec)
    where = f"{spec.runtime} {spec.precision} on {'GPU' if spec.use_gpu else 'CPU'}"
    if rate is None:
        return (f"{mp:.1f} MP to process ({read} sizes read from headers); no time estimate: no batch of "
                f"{spec.model} has run with {where} yet (each batch job records its seconds per megapixel)")
    seconds = mp * rate.seconds_per_mp / spec.workers
    return (f"{mp:.1f} MP to process ({read} sizes read from headers); estimated {seconds:.0f} s with "
            f"{spec.workers} worker(s), at {rate.seconds_per_mp:.2f} s/MP per worker measured by batch run "
            f"{rate.run_id} ({spec.model} v{rate.version}, {where})")
