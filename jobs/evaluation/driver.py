"""The evaluation job: `python -m jobs.evaluation.driver --spec JSON` (what `img2img eval` submits).

Scores one registered model version on one split of a dataset, on the cluster: the shards are
streamed from the object store by Ray Data, and `map_batches` runs a pool of `Scorer` actors,
each loading the model once, that enhance every full image through the tiled path
(`translator.tiling`) and score it. Only per-image numbers and small thumbnails come back to
the driver, which logs an MLflow evaluation run (per-image CSV, mean metrics, a grid of the best
and worst images) and tags the model version with `eval.<dataset>.*`.

Paired datasets: PSNR/SSIM of the output and of the input against the target, and the gain (dB).
The set's PSNR is that of the pooled MSE (`translator.metrics.SetTally`, docs/metrics.md), not
the mean of per-image PSNRs; per image the CSV keeps each image's PSNR and MSE.
Unpaired datasets: cycle PSNR/SSIM (A -> B -> A and B -> A -> B against the original), the
metric CycleGAN-style models are validated on (Zhu et al. 2017), which needs the reverse generator.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import asdict

import mlflow
import mlflow.pytorch
import numpy as np
import ray
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.settings import get_settings
from cluster.storage import Storage, arrow_filesystem
from jobs.data.decode import _decode
from jobs.data.stream import check_shards, read_parquet_v1
from jobs.entry import marked_main
from jobs.evaluation.spec import MARK, EvalSpec
from registry.manifest import read_manifest
from registry.tracking import RunLogger, eval_tags, experiment_id, upsert, write_model_card
from translator import images, tiling
from translator.allocator import retain_freed_memory
from translator.metrics import (
    PSNR_DEFINITION,
    SetTally,
    baseline,
    psnr,
    squared_error,
    ssim,
    to_unit,
)
from translator.precision import strict_fp32
from translator.variants import build_variant

log = logging.getLogger("img2img.eval")
THUMB = 128  # longest side of the thumbnails kept for the best/worst grid, px
PAIRED_KEYS = ("psnr", "ssim", "input_psnr", "input_ssim", "gain_db")  # per image (rows, CSV)
CYCLE_KEYS = ("cycle_psnr", "cycle_ssim")
ERROR_KEYS = ("values", "sse", "input_sse")  # per image: pixel values and squared errors, for the set's PSNR


def load_checkpoint_variant(path: str, device):
    """A checkpoint in the store (`bucket/checkpoints/...`) -> the variant with its weights
    (all networks, e.g. both generators of a CycleGAN), in eval mode on `device`."""
    with arrow_filesystem().open_input_stream(f"{path}/state.pt") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)["variant"]
    variant = build_variant(state["variant"], state["config"], device=device)
    variant.load_state_dict(state, with_optimizers=False)
    variant.eval()
    return variant


def _thumb(x) -> bytes:
    img = images.to_pil(x)
    img.thumbnail((THUMB, THUMB))
    return images.encode(img)


class Scorer:
    """Ray Data actor: numpy batch of PNG-bytes rows -> one row of metrics per image.

    Input rows: paired {"key", "input", "target"}; unpaired {"key", "domain", "image"}.
    Output rows: {"key", "domain", "height", "width", metric columns, ERROR_KEYS, "thumbs"} where
    metric columns are PAIRED_KEYS or CYCLE_KEYS (dB for PSNR/gain, SSIM in [0, 1]), ERROR_KEYS
    the pixel values (C*H*W) and squared errors (input_sse: 0 unpaired), and "thumbs" holds
    PNG thumbnails (input, output, target; unpaired: image, translated, cycled) as a JSON list of hex.
    """

    def __init__(self, spec: dict):
        self.spec = EvalSpec(**spec)
        self.device = torch.device("cuda" if self.spec.use_gpu and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, int(self.spec.cpus_per_worker)))
        retain_freed_memory()  # as an endpoint replica does (translator/allocator.py)
        if self.spec.kind == "paired":  # the registered model itself
            mlflow.set_tracking_uri(get_settings().mlflow_uri)  # an actor does not inherit the driver's
            net = mlflow.pytorch.load_model(self.spec.model_uri, map_location=self.device).eval()

            def forward(x):  # strict fp32, as training's validation (whose numbers the gate may reuse)
                with torch.no_grad(), strict_fp32(self.device.type):
                    return net(x.to(self.device)).float()

            self.forward = forward
            self.reverse = None
        else:
            variant = load_checkpoint_variant(self.spec.checkpoint, self.device)
            self.forward = lambda x: variant.translate(x, fp32=True)
            self.reverse = (lambda x: variant.translate(x, reverse=True, fp32=True)) if variant.reverse_key else None

    def _enhance(self, fn, x):
        return tiling.enhance(fn, x, tile=self.spec.tile, overlap=self.spec.overlap, multiple=self.spec.multiple,
                              scale=self.spec.scale)

    def __call__(self, batch: dict) -> dict:
        def tensor(png: bytes):
            return torch.from_numpy(_decode(png).transpose(2, 0, 1).copy()).unsqueeze(0).float() * 2 - 1  # [0, 1] -> [-1, 1]

        def score(out, ref):
            p = float(psnr(to_unit(out), to_unit(ref))[0])
            s = float(ssim(to_unit(out), to_unit(ref))[0]) if min(ref.shape[-2:]) >= 11 else math.nan
            return p, s

        rows: dict[str, list] = {}
        for i in range(len(batch["key"])):
            if self.spec.kind == "paired":
                x, y = tensor(batch["input"][i]), tensor(batch["target"][i])
                out = self._enhance(self.forward, x).cpu()
                p, s = score(out, y)
                base = baseline(x, y.shape[-2:])  # super-resolution: the input's bicubic upscale
                ip, is_ = score(base, y)
                row = {"domain": "", "psnr": p, "ssim": s, "input_psnr": ip, "input_ssim": is_, "gain_db": p - ip,
                       "sse": float(squared_error(to_unit(out), to_unit(y))[0]),
                       "input_sse": float(squared_error(to_unit(base), to_unit(y))[0])}
                thumbs = [x, out, y]
            else:
                x, domain = tensor(batch["image"][i]), str(batch["domain"][i])
                there, back = (self.forward, self.reverse) if domain == "a" else (self.reverse, self.forward)
                mid = self._enhance(there, x)
                out = self._enhance(back, mid).cpu()
                p, s = score(out, x)
                row = {"domain": domain, "cycle_psnr": p, "cycle_ssim": s, "input_sse": 0.0,
                       "sse": float(squared_error(to_unit(out), to_unit(x))[0])}
                thumbs = [x, mid.cpu(), out]
            row.update(key=str(batch["key"][i]), height=int(x.shape[-2]), width=int(x.shape[-1]), values=int(out[0].numel()),
                       thumbs=json.dumps([_thumb(t).hex() for t in thumbs]))
            for k, v in row.items():
                rows.setdefault(k, []).append(v)
        return {k: np.asarray(v) for k, v in rows.items()}


def _source(spec: EvalSpec, settings):
    """The dataset rows to score, streamed from the store (nothing is collected here)."""
    storage = Storage(settings)
    manifest = read_manifest(storage, spec.dataset)
    domains = [None] if manifest.kind == "paired" else ["a", "b"]
    paths = [p for split in spec.splits for d in domains
             if manifest.counts.get(split) for p in check_shards(storage, manifest, split, d)]
    columns = ["key", "input", "target"] if manifest.kind == "paired" else ["key", "domain", "image"]
    ds = read_parquet_v1(paths, arrow_filesystem(settings)).select_columns(columns)
    total = sum(manifest.counts.get(s, 0) for s in spec.splits)
    if spec.limit:
        ds, total = ds.limit(spec.limit), min(total, spec.limit)
    return ds, total


def set_metrics(rows: list[dict], paired: bool) -> dict[str, float]:
    """Scored rows (see `Scorer`) -> the set's metrics (`translator.metrics.SetTally.summary`):
    paired {"psnr", "ssim", "input_psnr", "input_ssim", "gain_db" (pooled-MSE PSNR, dB; SSIM
    mean), "improved_share", "unchanged", "median_gain_db"}; unpaired {"cycle_psnr", "cycle_ssim"}.
    Undefined extras (nan: no pair changed by the degradation) are left out."""
    tally = SetTally()
    for r in rows:
        if paired:
            tally.add_image(r["values"], r["sse"], r["ssim"], r["input_sse"], r["input_ssim"])
        else:
            tally.add_image(r["values"], r["sse"], r["cycle_ssim"])
    out = tally.summary(paired)
    if not paired:
        out = {f"cycle_{k}": v for k, v in out.items()}
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def _grid(rows: list[dict], key: str, n: int = 2):
    """Best n and worst n images by `key`: rows of (input, output, target) thumbnails."""
    ranked = sorted(rows, key=lambda r: r[key], reverse=True)
    picked = ranked[:n] + [r for r in ranked[-n:] if r not in ranked[:n]]
    return images.grid([[Image.open(io.BytesIO(bytes.fromhex(t))) for t in json.loads(r["thumbs"])] for r in picked])


def _csv(rows: list[dict], keys) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["key", "domain", "height", "width", *keys, "values", "mse", "input_mse"])
    for r in rows:
        w.writerow([r["key"], r["domain"], r["height"], r["width"], *(f"{r[k]:.4f}" for k in keys), r["values"],
                    f"{r['sse'] / r['values']:.6e}", f"{r['input_sse'] / r['values']:.6e}"])
    return buf.getvalue()


def run(spec: EvalSpec, settings=None, echo=print) -> dict:
    """Score, log the MLflow evaluation run, tag the version -> the summary dict."""
    settings = settings or get_settings()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.time()
    ds, total = _source(spec, settings)
    scored = ds.map_batches(Scorer, fn_constructor_kwargs={"spec": asdict(spec)}, batch_size=1,
                            batch_format="numpy", concurrency=spec.workers, num_cpus=spec.cpus_per_worker,
                            num_gpus=1 if spec.use_gpu else 0)
    keys = PAIRED_KEYS if spec.kind == "paired" else CYCLE_KEYS
    rows, last = [], 0.0
    echo(f"{MARK} progress 0/{total}", flush=True)
    for row in scored.iter_rows():
        rows.append(dict(row))
        if time.time() - last > 0.5 or len(rows) == total:
            echo(f"{MARK} progress {len(rows)}/{total}", flush=True)
            last = time.time()
    if not rows:
        raise Img2ImgError(f"dataset {spec.dataset!r} has no images in split {spec.split!r}")
    means = set_metrics(rows, spec.kind == "paired")
    seconds = time.time() - t0
    client = MlflowClient(settings.mlflow_uri)
    exp_id = experiment_id(client, spec.experiment)
    run_ = client.create_run(exp_id, run_name=f"eval-{spec.model}-v{spec.version}-{spec.dataset}", tags={
        "img2img": "eval", "model_name": spec.model, "model_version": spec.version,
        "model_uri": spec.model_uri, "dataset": spec.dataset, "split": spec.split, "psnr_def": PSNR_DEFINITION})
    run_id = run_.info.run_id
    logger = RunLogger(settings.mlflow_uri, run_id)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {
        "model": f"{spec.model}/{spec.version}", "variant": spec.variant, "dataset": spec.dataset,
        "dataset_sha256": spec.dataset_sha256, "split": spec.split, "limit": spec.limit, "images": len(rows),
        "tile": spec.tile, "overlap": spec.overlap, "device": "gpu" if spec.use_gpu else "cpu"}.items()])
    logger.metrics({**means, "images": len(rows), "seconds": seconds}, 0)
    logger.text(_csv(rows, keys), "eval/per_image.csv")
    logger.image(_grid(rows, keys[0]), "eval/best_worst.png")
    client.set_terminated(run_id)
    summary = {"model": spec.model, "version": spec.version, "variant": spec.variant, "dataset": spec.dataset,
               "split": spec.split, "dataset_sha256": spec.dataset_sha256, "kind": spec.kind, "images": len(rows), "scale": spec.scale,
               "limit": spec.limit, "metrics": means, "psnr_def": PSNR_DEFINITION, "seconds": round(seconds, 2), "run_id": run_id,
               "worst": sorted(rows, key=lambda r: r[keys[0]])[0]["key"]}
    if not spec.limit:  # a partial score must not stand in for the dataset's in the promotion gate
        for k, v in eval_tags(summary).items():
            upsert(client.set_model_version_tag, spec.model, spec.version, k, v)
        write_model_card(client, spec.model, spec.version)
    echo(f"{MARK} result {json.dumps(summary)}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    return marked_main("img2img evaluation job", MARK, "evaluation", lambda text: run(EvalSpec.from_json(text)), argv)


if __name__ == "__main__":
    sys.exit(main())
