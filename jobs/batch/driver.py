"""The batch job: `python -m jobs.batch.driver --spec JSON` (what `img2img batch` submits).

Lists the input prefix, plans one output per input (`jobs.batch.plan`), and streams the inputs
through Ray Data: `map_batches` runs a pool of `Enhancer` actors, each loading the registered
version once (`registry.loading.load`) and running every file through `translator.compute.enhance_alone`,
the endpoint's own decode -> tiles -> model -> merge -> encode path, so a file gives the bytes
`POST /enhance` gives with the same model, runtime and precision. Each output is one PUT (whole
or absent) carrying the input's SHA-256 and the model (NAME/VERSION/RUN) as object metadata: a
re-run skips those outputs and writes nothing twice; so does the retry of a task whose worker
died (Ray Data restarts the actor), and a retried row is reported once. Videos go through the
same actors in chunks of frames (`jobs.batch.frames`). Unreadable files are listed, never fatal.
The manifest (`batch-manifest.json`) is written last in the output prefix; an MLflow run holds
the counts, images/s, seconds per megapixel, the manifest and a before/after grid."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from cluster.storage import Storage
from jobs.batch import frames
from jobs.batch.plan import VIDEO, Item, Location, plan
from jobs.batch.spec import MADE_BY, MANIFEST, MARK, SOURCE_SHA, BatchSpec
from jobs.batch.summary import GRID_FILES, before_after, manifest_json, summarise
from jobs.entry import marked_main
from registry.loading import load
from registry.tracking import RunLogger, experiment_id
from translator import codec
from translator.allocator import retain_freed_memory
from translator.compute import enhance_alone
from translator.video import VIDEO_SUFFIXES

log = logging.getLogger("img2img.batch")


COLUMNS = ("key", "size", "out_key", "status", "reason", "seconds", "pixels", "first", "frames")


class Enhancer:
    """Ray Data actor: a batch of rows {"key", "size", "out_key", "fmt", "sha", "first", "last",
    "frames"} -> one report row each {"key", "size", "out_key", "status" (written | skipped |
    failed), "reason", "seconds", "pixels" (of the input computed), "first", "frames"}. A row is
    an image (its output written here) or, with fmt "chunk", a run of a video's frames
    (`jobs.batch.frames`). The model is loaded once per actor."""

    def __init__(self, spec: dict):
        self.spec = BatchSpec(**spec)
        settings = get_settings()
        threads = max(1, int(self.spec.cpus_per_worker))
        torch.set_num_threads(threads)
        retain_freed_memory()  # as an endpoint replica does (translator/allocator.py)
        self.model = load(settings.mlflow_uri, self.spec.model, self.spec.version,
                          device="cuda" if self.spec.use_gpu and torch.cuda.is_available() else "cpu",
                          runtime=self.spec.runtime, threads=threads, precision=self.spec.precision)
        self.src = Storage(settings, bucket=self.spec.src_bucket)
        self.dst = Storage(settings, bucket=self.spec.dst_bucket)
        self.raise_with = "img2img batch SRC -o DST"  # the refusal adds --max-megapixels N
        self.chunks = frames.ChunkWorker(self.spec, settings, self.model, Path(tempfile.mkdtemp(prefix="img2img-batch-")))

    def one(self, key: str, out_key: str, fmt: str) -> tuple[str, str, int]:
        """-> (status, reason, pixels computed) of one image."""
        body = self.src.get_bytes(key)
        sha = hashlib.sha256(body).hexdigest()
        meta = self.dst.metadata(out_key)
        if meta and meta.get(SOURCE_SHA) == sha and meta.get(MADE_BY) == self.spec.model_id:
            return "skipped", "already written from this input by this model", 0
        try:
            data, media, decoded, *_ = enhance_alone(body, self.spec.max_pixels, self.model, "AtoB", fmt,
                                                     self.spec.tile, self.spec.overlap, raise_with=self.raise_with)
        except codec.RequestError as e:
            return "failed", e.message, 0
        self.dst.put_bytes(out_key, data, media, metadata={SOURCE_SHA: sha, MADE_BY: self.spec.model_id})
        return "written", "", int(decoded.tensor.shape[-2] * decoded.tensor.shape[-1])

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {k: [] for k in COLUMNS}
        for i, key in enumerate(batch["key"]):
            key, out_key, fmt = str(key), str(batch["out_key"][i]), str(batch["fmt"][i])
            first, last, n = (int(batch[k][i]) for k in ("first", "last", "frames"))
            t0 = time.perf_counter()
            try:
                if fmt == frames.CHUNK:
                    status, reason, pixels = self.chunks.one(key, out_key, str(batch["sha"][i]), first, last, n)
                else:
                    status, reason, pixels = self.one(key, out_key, fmt)
            except Img2ImgError as e:  # the store refused this object: listed, the batch goes on
                status, reason, pixels = "failed", str(e), 0
            for k, v in (("key", key), ("size", int(batch["size"][i])), ("out_key", out_key), ("status", status),
                         ("reason", reason), ("seconds", round(time.perf_counter() - t0, 4)), ("pixels", pixels),
                         ("first", first), ("frames", n)):
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


def _image_row(item: Item) -> dict:
    return {**asdict(item), "sha": "", "first": 0, "last": 0, "frames": 1}


def run(spec: BatchSpec, settings=None, echo=print) -> dict:
    """Enhance every planned input, write the manifest, log the MLflow run -> the summary
    (`jobs.batch.summary.summarise` plus "frames" (video frames), "run_id" and "manifest").
    Progress is printed in units of work: an image is one, a video its frames."""
    settings = settings or get_settings()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.time()
    items = list_items(spec, settings)
    rows = [{"key": i.key, "size": i.size, "out_key": "", "status": "failed", "reason": i.reason, "seconds": 0.0,
             "pixels": 0} for i in items if i.reason]
    with tempfile.TemporaryDirectory(prefix="img2img-batch-") as work:
        videos: list[frames.Video] = []
        for i in items:
            if not i.reason and i.fmt == VIDEO:
                got = frames.prepare(spec, settings, i, Path(work))
                (videos.append if isinstance(got, frames.Video) else rows.append)(got)
        todo = [_image_row(i) for i in items if not i.reason and i.fmt != VIDEO]
        todo += [r for v in videos for r in frames.chunk_rows(v)]
        total = len(items) - len(videos) + sum(len(v.info.pts) for v in videos)
        done = len(rows)
        echo(f"{MARK} progress {done}/{total}", flush=True)
        results: dict[tuple[str, str], dict] = {}  # by (input, output): a retried task's row counts once
        if todo:
            ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * spec.workers))
            out = ds.map_batches(Enhancer, fn_constructor_kwargs={"spec": asdict(spec)}, batch_size=1,
                                 batch_format="numpy", concurrency=spec.workers, num_cpus=spec.cpus_per_worker,
                                 num_gpus=1 if spec.use_gpu else 0)
            last = 0.0
            for row in out.iter_rows():
                row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                seen = results.get((row["key"], row["out_key"]))
                if seen is None:
                    done += row["frames"]
                if seen is None or seen["status"] != "written":  # a retry skips what its first try wrote
                    results[(row["key"], row["out_key"])] = row
                if time.time() - last > 0.5 or done == total:
                    echo(f"{MARK} progress {done}/{total}", flush=True)
                    last = time.time()
        by_video: dict[str, list[dict]] = {}
        for (key, _), row in results.items():
            if key in {v.item.key for v in videos}:
                by_video.setdefault(key, []).append(row)
            else:
                rows.append({k: row[k] for k in ("key", "size", "out_key", "status", "reason", "seconds", "pixels")})
        rows += [frames.finish(spec, settings, v, by_video.get(v.item.key, [])) for v in videos]
    summary = summarise(rows, time.time() - t0)
    summary["frames"] = sum(len(v.info.pts) for v in videos)
    made = [r for r in rows if r["status"] == "written" and r["pixels"]]
    summary["megapixels"] = round(sum(r["pixels"] for r in made) / 1e6, 3)
    # worker seconds per input megapixel: what `--dry-run` estimates the time with (jobs.batch.estimate)
    summary["seconds_per_megapixel"] = round(sum(r["seconds"] for r in made) / summary["megapixels"], 4) \
        if summary["megapixels"] else 0.0
    manifest_key = Location(spec.dst_bucket, spec.dst_prefix).manifest_key
    body = manifest_json(spec, rows, summary)
    Storage(settings, bucket=spec.dst_bucket).put_bytes(manifest_key, body.encode(), "application/json")
    summary["manifest"] = f"s3://{spec.dst_bucket}/{manifest_key}"
    summary["run_id"] = log_run(spec, settings, summary, body, rows)
    echo(f"{MARK} result {json.dumps(summary)}", flush=True)
    return summary


def log_run(spec: BatchSpec, settings, summary: dict, manifest: str, rows: list[dict]) -> str:
    """The MLflow run of a batch: params, counts, images/s and seconds per megapixel, the
    manifest, and a before/after grid of the first GRID_FILES images written. -> its id."""
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
    logger.metrics({k: summary[k] for k in ("files", "written", "skipped", "failed", "seconds", "images_per_s", "frames",
                                            "megapixels") + (("seconds_per_megapixel",) if summary["megapixels"] else ())}, 0)
    logger.text(manifest, f"batch/{MANIFEST}")
    pairs = [(r["key"], Storage(settings, bucket=spec.src_bucket).get_bytes(r["key"]),
              Storage(settings, bucket=spec.dst_bucket).get_bytes(r["out_key"]))
             for r in sorted(rows, key=lambda r: r["key"]) if r["status"] == "written" and not r["out_key"].lower().endswith(VIDEO_SUFFIXES)][:GRID_FILES]
    grid = before_after(pairs, spec.max_pixels)
    if grid is not None:
        logger.image(grid, "batch/before-after.png")
    client.set_terminated(run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    return marked_main("img2img batch job", MARK, "batch", lambda text: run(BatchSpec.from_json(text)), argv)


if __name__ == "__main__":
    sys.exit(main())
