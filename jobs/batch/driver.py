"""The batch job: `python -m jobs.batch.driver --spec JSON` (what `img2img batch` submits).

Lists the input prefix, plans one output per input (`jobs.batch.plan`), and streams the inputs
through Ray Data: `map_batches` runs a pool of `Enhancer` actors, each loading the registered
version once (`registry.loading.load`) and running every file through `translator.compute.enhance_alone`,
the endpoint's own decode -> tiles -> model -> merge -> encode path, so a file gives the bytes
`POST /enhance` gives with the same model, runtime and precision. Each output is one PUT (whole
or absent) carrying the input's SHA-256 and the model (NAME/VERSION/RUN) as object metadata: a
re-run skips those outputs and writes nothing twice. Unreadable files are listed, never fatal.
The manifest (`batch-manifest.json`) is written last in the output prefix; an MLflow run holds
the counts, images/s and the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict

import numpy as np
import ray
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from cluster.storage import Storage
from jobs.batch.plan import Item, Location, plan
from jobs.batch.spec import MANIFEST, MARK, BatchSpec
from jobs.batch.summary import manifest_json, summarise
from jobs.entry import marked_main
from registry.loading import load
from registry.tracking import RunLogger, experiment_id
from translator import codec
from translator.compute import enhance_alone

log = logging.getLogger("img2img.batch")
SOURCE_SHA = "img2img-source-sha256"  # output object metadata: the input's checksum
MADE_BY = "img2img-model"  # ... and NAME/VERSION/RUN of the model that made it


class Enhancer:
    """Ray Data actor: a batch of planned items {"key", "size", "out_key", "fmt"} -> one report
    row each {"key", "size", "out_key", "status" (written | skipped | failed), "reason", "seconds"}.
    The model is loaded once per actor."""

    def __init__(self, spec: dict):
        self.spec = BatchSpec(**spec)
        settings = get_settings()
        threads = max(1, int(self.spec.cpus_per_worker))
        torch.set_num_threads(threads)
        self.model = load(settings.mlflow_uri, self.spec.model, self.spec.version,
                          device="cuda" if self.spec.use_gpu and torch.cuda.is_available() else "cpu",
                          runtime=self.spec.runtime, threads=threads, precision=self.spec.precision)
        self.src = Storage(settings, bucket=self.spec.src_bucket)
        self.dst = Storage(settings, bucket=self.spec.dst_bucket)
        self.raise_with = "img2img batch SRC -o DST"  # the refusal adds --max-megapixels N

    def one(self, key: str, out_key: str, fmt: str) -> tuple[str, str]:
        """-> (status, reason) of one input."""
        body = self.src.get_bytes(key)
        sha = hashlib.sha256(body).hexdigest()
        meta = self.dst.metadata(out_key)
        if meta and meta.get(SOURCE_SHA) == sha and meta.get(MADE_BY) == self.spec.model_id:
            return "skipped", "already written from this input by this model"
        try:
            data, media, *_ = enhance_alone(body, self.spec.max_pixels, self.model, "AtoB", fmt, self.spec.tile,
                                            self.spec.overlap, raise_with=self.raise_with)
        except codec.RequestError as e:
            return "failed", e.message
        self.dst.put_bytes(out_key, data, media, metadata={SOURCE_SHA: sha, MADE_BY: self.spec.model_id})
        return "written", ""

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {k: [] for k in ("key", "size", "out_key", "status", "reason", "seconds")}
        for key, size, out_key, fmt in zip(batch["key"], batch["size"], batch["out_key"], batch["fmt"]):
            t0 = time.perf_counter()
            try:
                status, reason = self.one(str(key), str(out_key), str(fmt))
            except Img2ImgError as e:  # the store refused this object: listed, the batch goes on
                status, reason = "failed", str(e)
            for k, v in (("key", str(key)), ("size", int(size)), ("out_key", str(out_key)), ("status", status),
                         ("reason", reason), ("seconds", round(time.perf_counter() - t0, 4))):
                rows[k].append(v)
        return {k: np.asarray(v) for k, v in rows.items()}


def list_items(spec: BatchSpec, settings) -> list[Item]:
    """The planned inputs of `spec` (see `jobs.batch.plan.plan`). Raises Img2ImgError when
    there is none."""
    src = Location(spec.src_bucket, spec.src_prefix)
    objects = [(o.key, o.size) for o in Storage(settings, bucket=spec.src_bucket).list(spec.src_prefix)
               if src.is_folder or o.key == spec.src_prefix]
    items = plan(objects, src, Location(spec.dst_bucket, spec.dst_prefix), spec.fmt)
    if not items:
        raise Img2ImgError(f"no files under {src}")
    return items


def run(spec: BatchSpec, settings=None, echo=print) -> dict:
    """Enhance every planned input, write the manifest, log the MLflow run -> the summary
    (`jobs.batch.summary.summarise` plus "run_id" and "manifest")."""
    settings = settings or get_settings()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.time()
    items = list_items(spec, settings)
    todo = [asdict(i) for i in items if not i.reason]
    rows = [{"key": i.key, "size": i.size, "out_key": "", "status": "failed", "reason": i.reason, "seconds": 0.0}
            for i in items if i.reason]
    total = len(items)
    echo(f"{MARK} progress {len(rows)}/{total}", flush=True)
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * spec.workers))
        done = ds.map_batches(Enhancer, fn_constructor_kwargs={"spec": asdict(spec)}, batch_size=1,
                              batch_format="numpy", concurrency=spec.workers, num_cpus=spec.cpus_per_worker,
                              num_gpus=1 if spec.use_gpu else 0)
        last = 0.0
        for row in done.iter_rows():
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            if time.time() - last > 0.5 or len(rows) == total:
                echo(f"{MARK} progress {len(rows)}/{total}", flush=True)
                last = time.time()
    summary = summarise(rows, time.time() - t0)
    manifest_key = Location(spec.dst_bucket, spec.dst_prefix).manifest_key
    body = manifest_json(spec, rows, summary)
    Storage(settings, bucket=spec.dst_bucket).put_bytes(manifest_key, body.encode(), "application/json")
    summary["manifest"] = f"s3://{spec.dst_bucket}/{manifest_key}"
    summary["run_id"] = log_run(spec, settings, summary, body)
    echo(f"{MARK} result {json.dumps(summary)}", flush=True)
    return summary


def log_run(spec: BatchSpec, settings, summary: dict, manifest: str) -> str:
    """The MLflow run of a batch: params, counts and images/s, the manifest. -> its id."""
    client = MlflowClient(settings.mlflow_uri)
    run_ = client.create_run(experiment_id(client, spec.experiment),
                             run_name=f"batch-{spec.model}-v{spec.version}",
                             tags={"img2img": "batch", "model_name": spec.model, "model_version": spec.version})
    run_id = run_.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {
        "model": f"{spec.model}/{spec.version}", "input": f"s3://{spec.src_bucket}/{spec.src_prefix}",
        "output": f"s3://{spec.dst_bucket}/{spec.dst_prefix}", "format": spec.fmt, "workers": spec.workers,
        "runtime": spec.runtime, "precision": spec.precision, "device": "gpu" if spec.use_gpu else "cpu"}.items()])
    logger = RunLogger(settings.mlflow_uri, run_id)
    logger.metrics({k: summary[k] for k in ("files", "written", "skipped", "failed", "seconds", "images_per_s")}, 0)
    logger.text(manifest, f"batch/{MANIFEST}")
    client.set_terminated(run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    return marked_main("img2img batch job", MARK, "batch", lambda text: run(BatchSpec.from_json(text)), argv)


if __name__ == "__main__":
    sys.exit(main())
