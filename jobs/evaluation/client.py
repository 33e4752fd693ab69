"""Client side of `img2img eval`: check the request, submit the evaluation job through the Ray
Jobs API, follow its progress from the job's log, and return its summary. The images never come
to this machine: the job reads them from the object store on the cluster."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from cluster.admission import Footprint
from cluster.admission import check_options as check_queue_options
from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.evaluation.spec import MARK, EvalSpec, check_options
from jobs.manage import follow_result
from jobs.training.client import admit, cluster_resources, job_client, submit_job
from registry.manifest import read_manifest
from registry.models import client, resolve
from translator.descriptor import GeneratorDescriptor


def prepare(settings: Settings, ref: str, dataset: str, split: str = "val", limit: int | None = None,
            workers: int = 1, cpus_per_worker: float = 1.0, gpu: bool | None = None) -> EvalSpec:
    """Everything that can be refused before submitting: the model, the dataset and split, and
    whether the model can score that kind of dataset. Raises Img2ImgError."""
    check_options(split, limit, workers, cpus_per_worker)
    v = resolve(settings, ref)
    manifest = read_manifest(Storage(settings), dataset)
    splits = [s for s in (manifest.splits if split == "all" else [split]) if manifest.counts.get(s)]
    if not splits:
        raise Img2ImgError(f"dataset {dataset!r} has no rows in split {split!r} "
                           f"(it has {', '.join(f'{s}: {n}' for s, n in manifest.counts.items()) or 'none'})")
    variant = v.tags.get("variant", "")
    descriptor = GeneratorDescriptor.from_tags(v.tags)
    if manifest.kind == "paired" and descriptor.scale != manifest.scale:
        raise Img2ImgError(f"{v.name}/{v.version} makes images {descriptor.scale}x its input's size, but dataset "
                           f"{dataset!r} holds {'same-size pairs' if manifest.scale == 1 else f'{manifest.scale}x pairs'}"
                           "; score it on a dataset of its own scale")
    checkpoint = None
    if manifest.kind != "paired":
        if not descriptor.two_way:
            raise Img2ImgError(f"{dataset!r} is unpaired: it can only be scored by cycle consistency, which needs "
                               f"a reverse generator; {v.name}/{v.version} is a {variant or 'unknown'} model "
                               "without one (cyclegan and dualgan have one)")
        checkpoint = client(settings).get_run(v.run_id).data.tags.get("checkpoint")
        bucket, _, key = (checkpoint or "").partition("/")
        if not key or not Storage(settings).exists(f"{key}/state.pt"):
            raise Img2ImgError(f"the reverse generator of {v.name}/{v.version} was in its training checkpoint, "
                               f"which is not in the object store any more ({checkpoint or 'none recorded'})")
    resources = cluster_resources(settings)
    if gpu is None:
        gpu = resources.get("GPU", 0) >= 1
    # the same admission as training: its Scorer actors and read tasks need their CPUs alike
    admit(settings, footprint(workers, cpus_per_worker, bool(gpu)))
    return EvalSpec(model=v.name, version=v.version, dataset=dataset, split=split, limit=limit, variant=variant,
                    multiple=descriptor.size_multiple, scale=descriptor.scale, model_uri=f"models:/{v.name}/{v.version}",
                    checkpoint=checkpoint, kind=manifest.kind, dataset_sha256=manifest.sha256, splits=splits,
                    workers=workers, cpus_per_worker=cpus_per_worker, use_gpu=bool(gpu))


def footprint(workers: int, cpus_per_worker: float, use_gpu: bool):
    """What an evaluation job holds: its Scorer actors, the data pipeline, the driver."""
    return Footprint(workers, cpus_per_worker, 1.0 if use_gpu else 0.0)


def evaluate(settings: Settings, ref: str, dataset: str, split: str = "val", limit: int | None = None,
             progress: Callable[[int, int], None] | None = None, priority: str = "normal",
             queue_timeout_s: float | None = None, **kw) -> dict:
    """Score registered model `ref` (NAME | NAME@alias | NAME/VERSION: `registry.refs`) on `dataset`/`split` on the
    cluster -> the summary: {"model", "version", "dataset", "split", "images", "metrics": {psnr,
    ssim, input_psnr, input_ssim, gain_db} or {cycle_psnr, cycle_ssim}, "run_id", ...}; PSNR and
    gain in dB, SSIM in [0, 1]. `progress(done, total)` is called as images are scored. The job
    waits its turn in the cluster's queue like every job (`priority`, `queue_timeout_s`: see
    cluster.admission). Raises Img2ImgError if the request is refused or the job fails."""
    check_options(split, limit, kw.get("workers", 1), kw.get("cpus_per_worker", 1.0))
    check_queue_options(priority, queue_timeout_s)
    spec = prepare(settings, ref, dataset, split, limit, **kw)
    client = job_client(settings)
    entrypoint = f"python -m jobs.evaluation.driver --spec {shlex.quote(spec.to_json())}"
    metadata = {"img2img": "eval", "model": f"{spec.model}/{spec.version}", "dataset": dataset}
    job_id = submit_job(settings, entrypoint=entrypoint, metadata=metadata,
                        footprint=footprint(spec.workers, spec.cpus_per_worker, spec.use_gpu),
                        priority=priority, queue_timeout_s=queue_timeout_s)
    return follow_result(client, job_id, MARK, "evaluation", progress)
