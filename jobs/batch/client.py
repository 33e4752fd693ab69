"""Client side of `img2img batch`: resolve the model and the locations, upload a local input to
the store, submit the batch job through the cluster's admission, follow its progress, and
download the outputs to a local destination. The images are enhanced on the cluster only."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.admission import Footprint
from cluster.errors import Img2ImgError
from cluster.files import make_output_dir, write_atomic
from cluster.services import cluster_resources
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.batch.plan import Item, Location, check_locations, parse_location, plan
from jobs.batch.spec import MANIFEST, MARK, MAX_PIXELS, BatchSpec, check_options
from jobs.manage import follow_result
from jobs.training.client import job_client, submit_job
from registry.models import resolve

STAGING = "batch"  # local inputs and outputs are staged under s3://<IMG2IMG_BUCKET>/batch/<id>/
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class Request:
    """A resolved batch: the spec the job runs and the local ends the client handles."""

    spec: BatchSpec
    src: Location  # where the job reads (s3)
    dst: Location  # where the job writes (s3)
    local_src: Path | None = None
    local_dst: Path | None = None

    @property
    def staging(self) -> str | None:
        """The staging prefix `batch/<id>/` of a local input or output (None when both are s3)."""
        for local, loc in ((self.local_src, self.src), (self.local_dst, self.dst)):
            if local is not None:
                return "/".join(loc.prefix.split("/")[:2]) + "/"
        return None


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    raise Img2ImgError(f"{path} does not exist")


def _staging_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def locations(settings: Settings, src_text: str, dst_text: str) -> tuple[Location, Location, Path | None, Path | None]:
    """SRC and DST as the job sees them (s3), with the local paths they stand for. A local
    SRC/DST maps to a staging prefix derived from both paths, so a re-run reuses it."""
    src, dst = parse_location(src_text), parse_location(dst_text)
    sid = _staging_id(str(src.path.resolve()) if src.path else str(src), str(dst.path.resolve()) if dst.path else str(dst))
    local_src = local_dst = None
    if not src.is_s3:
        local_src = src.path
        _local_files(local_src)  # refuse a missing path before anything else
        name = local_src.resolve().name
        src = Location(settings.bucket, f"{STAGING}/{sid}/in/" + ("" if local_src.is_dir() else name))
    if not dst.is_s3:
        local_dst = dst.path
        single = not src.is_folder and local_dst.suffix and not local_dst.is_dir()
        dst = Location(settings.bucket, f"{STAGING}/{sid}/out/" + (local_dst.name if single else ""))
    check_locations(src, dst)
    return src, dst, local_src, local_dst


def upload(settings: Settings, local: Path, src: Location, progress: Progress | None = None) -> int:
    """Copy the files of `local` (a file or a folder, recursively) to `src`, keeping relative
    paths; files already there with the same size are not sent again. -> files sent."""
    store = Storage(settings, bucket=src.bucket)
    store.ensure_bucket()
    files = _local_files(local)
    there = {o.key: o.size for o in store.list(src.prefix if src.is_folder else posixdir(src.prefix))}
    sent = 0
    for i, f in enumerate(files, 1):
        key = src.prefix + f.relative_to(local).as_posix() if src.is_folder else src.prefix
        if there.get(key) != f.stat().st_size:
            store.put_bytes(key, f.read_bytes())
            sent += 1
        if progress:
            progress("uploading", i, len(files))
    return sent


def posixdir(key: str) -> str:
    return key.rpartition("/")[0] + "/" if "/" in key else ""


def prepare(settings: Settings, src_text: str, dst_text: str, ref: str, fmt: str = "png", workers: int = 1,
            cpus_per_worker: float = 1.0, gpu: bool | None = None, max_megapixels: float = MAX_PIXELS / 1e6) -> Request:
    """Everything that can be refused before anything is uploaded or submitted: the options,
    the model, the locations and their buckets. Raises Img2ImgError."""
    check_options(fmt, workers, cpus_per_worker, max_megapixels)
    src, dst, local_src, local_dst = locations(settings, src_text, dst_text)
    v = resolve(settings, ref)
    for loc in {src.bucket, dst.bucket}:
        if loc != settings.bucket:
            Storage(settings, bucket=loc).check()
    if gpu is None:
        gpu = cluster_resources(settings).get("GPU", 0) >= 1
    spec = BatchSpec(model=v.name, version=v.version, run_id=v.run_id or "", src_bucket=src.bucket,
                     src_prefix=src.prefix, dst_bucket=dst.bucket, dst_prefix=dst.prefix, fmt=fmt, workers=workers,
                     cpus_per_worker=cpus_per_worker, use_gpu=bool(gpu), max_pixels=int(max_megapixels * 1e6))
    return Request(spec, src, dst, local_src, local_dst)


def dry_run(settings: Settings, req: Request) -> list[Item]:
    """What the job would process: the plan of the input's listing (local inputs listed here,
    with the keys they would get)."""
    if req.local_src is not None:
        root = req.local_src
        objects = [((req.src.prefix + f.relative_to(root).as_posix()) if req.src.is_folder else req.src.prefix,
                    f.stat().st_size) for f in _local_files(root)]
    else:
        objects = [(o.key, o.size) for o in Storage(settings, bucket=req.src.bucket).list(req.src.prefix)
                   if req.src.is_folder or o.key == req.src.prefix]
    return plan(objects, req.src, req.dst, req.spec.fmt)


def footprint(spec: BatchSpec) -> Footprint:
    """What a batch job holds: its Enhancer actors, the data pipeline, the driver."""
    return Footprint(spec.workers, spec.cpus_per_worker, 1.0 if spec.use_gpu else 0.0)


def _same_key(req: Request) -> str:
    """What makes two batches the same job: their output location (which also names a local
    run's staging prefix)."""
    return f"s3://{req.dst.bucket}/{req.dst.prefix}"


def running_same(settings: Settings, req: Request) -> str | None:
    """The id of a batch job not yet ended (queued or running) that writes where `req` writes;
    None when there is none."""
    key = _same_key(req)
    for job in job_client(settings).list_jobs():
        meta = job.metadata or {}
        status = str(job.status).split(".")[-1]
        if meta.get("img2img") == "batch" and meta.get("writes") == key and status in ("PENDING", "RUNNING"):
            return job.submission_id
    return None


def submit(settings: Settings, req: Request, priority: str = "normal", queue_timeout_s: float | None = None,
           progress: Progress | None = None) -> str:
    """Upload a local input, then submit the job (it waits its turn in the cluster's queue).
    -> the job id. Raises Img2ImgError when the same batch (the same output location) is
    queued or running already: the two would share, and one delete, the staged files."""
    if other := running_same(settings, req):
        raise Img2ImgError(f"the same batch (into {req.local_dst or req.dst}) is already queued or running as job "
                           f"{other}; follow it with: img2img jobs status {other} --follow")
    if req.local_src is not None:
        upload(settings, req.local_src, req.src, progress)
    entrypoint = f"python -m jobs.batch.driver --spec {shlex.quote(req.spec.to_json())}"
    metadata = {"img2img": "batch", "model": f"{req.spec.model}/{req.spec.version}",
                "dataset": str(req.local_src or req.src), "writes": _same_key(req)}
    return submit_job(settings, entrypoint=entrypoint, metadata=metadata, footprint=footprint(req.spec),
                      priority=priority, queue_timeout_s=queue_timeout_s)


def follow(settings: Settings, job_id: str, progress: Progress | None = None) -> dict:
    """Follow the job's log to its end -> its summary (see `jobs.batch.driver.run`). Raises
    Img2ImgError when the job fails."""
    bar = (lambda done, total: progress("enhancing (images + video frames)", done, total)) if progress else None
    return follow_result(job_client(settings), job_id, MARK, "batch", bar)


def download(settings: Settings, req: Request, progress: Progress | None = None) -> int:
    """Copy the outputs the manifest lists as written or skipped (present) to the local
    destination, keeping relative paths; each file written whole (`write_atomic`). -> files."""
    store = Storage(settings, bucket=req.dst.bucket)
    manifest = json.loads(store.get_bytes(req.dst.manifest_key))
    present = [f for f in manifest["files"] if f["status"] in ("written", "skipped")]
    for i, f in enumerate(present, 1):
        if req.dst.is_folder:
            dest = req.local_dst / f["out_key"][len(req.dst.prefix):]
        else:
            dest = req.local_dst
        make_output_dir(dest.parent)
        write_atomic(dest, store.get_bytes(f["out_key"]))
        if progress:
            progress("downloading", i, len(present))
    if req.dst.is_folder:
        write_atomic(req.local_dst / MANIFEST, json.dumps(manifest, indent=1))
    return len(present)


def clean_staging(settings: Settings, req: Request) -> int:
    """Delete the staging prefix of a local input/output once the job succeeded and its
    outputs are downloaded (a failed or stopped job keeps it: the re-run reuses it). -> objects
    deleted. Kept while another batch into the same place is queued or running."""
    if req.staging is None or running_same(settings, req):
        return 0
    return Storage(settings).delete_prefix(req.staging)
