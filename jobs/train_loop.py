"""The per-worker training loop run by Ray Train's TorchTrainer.

Every worker: build the variant, wrap its networks for DDP, stream its shard of the data,
train; each epoch validate (metrics all-reduced across workers), and report a checkpoint
(rank 0 writes it). Only rank 0 talks to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from translator import images, tiling
from translator.metrics import psnr, ssim, to_unit
from translator.variants import build_variant

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


def _torch_batches(iterator, columns, batch_size, shuffle_buffer):
    for batch in iterator.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=shuffle_buffer):
        yield {c: torch.from_numpy(np.ascontiguousarray(batch[c])) for c in columns}


def train_batches(paired: bool, batch_size: int):
    """One epoch of training batches for this worker: {"input","target"} or {"a","b"}."""
    import ray.train

    buffer = batch_size * 4
    if paired:
        return _torch_batches(ray.train.get_dataset_shard("train"), ["input", "target"], batch_size, buffer)
    # Unpaired: two independent streams, each shuffled anew every epoch -> random A/B pairs.
    a = _torch_batches(ray.train.get_dataset_shard("train_a"), ["image"], batch_size, buffer)
    b = _torch_batches(ray.train.get_dataset_shard("train_b"), ["image"], batch_size, buffer)
    return ({"a": x["image"], "b": y["image"]} for x, y in zip(a, b))


def _reduce_device() -> torch.device:
    """NCCL (Ray Train's GPU backend) reduces only CUDA tensors; gloo only CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: dict[str, float], world: int) -> dict[str, float]:
    """Sum of each value over the workers."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_reduce_device())
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def _any_worker(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


# Column captions of the MLflow sample grids: unpaired rows come from domain A (then B), each
# translated to the other domain and back (cycle consistency).
SAMPLE_LABELS = {"paired": ["input", "output", "target"],
                 "unpaired": ["input (A or B)", "translated", "translated back"]}


@torch.no_grad()
def validate(variant, paired: bool, world: int, max_samples: int = 4):
    """Mean PSNR/SSIM over this worker's val shard, summed across workers, plus sample rows."""
    import ray.train

    variant.eval()
    forward = lambda x, rev=False: variant.translate(x, reverse=rev)  # noqa: E731
    sums = {"n": 0.0, "psnr": 0.0, "ssim": 0.0, "in_psnr": 0.0, "in_ssim": 0.0}
    samples = []
    cols = ["input", "target"] if paired else ["image"]
    streams = ["val"] if paired else ["val_a", "val_b"]
    for stream in streams:
        shard = ray.train.get_dataset_shard(stream)
        if shard is None:
            continue
        for batch in _torch_batches(shard, cols, 1, None):
            x = batch[cols[0]].to(variant.device)
            if paired:
                y = batch["target"].to(variant.device)
                out = tiling.enhance(forward, x, tile=512, overlap=32, multiple=variant.multiple)
                ref, base = to_unit(y), to_unit(x)
                sums["in_psnr"] += float(psnr(base, ref).sum())
                sums["in_ssim"] += float(ssim(base, ref).sum())
            else:  # cycle consistency: x -> other domain -> back
                rev = stream == "val_b"
                mid = tiling.enhance(lambda t, r=rev: forward(t, r), x, multiple=variant.multiple)
                out = tiling.enhance(lambda t, r=rev: forward(t, not r), mid, multiple=variant.multiple)
                ref, y = to_unit(x), mid
            sums["psnr"] += float(psnr(to_unit(out), ref).sum())
            sums["ssim"] += float(ssim(to_unit(out), ref).sum())
            sums["n"] += 1
            if len(samples) < max_samples:  # columns: see SAMPLE_LABELS
                row = [x, out, y] if paired else [x, y, out]
                samples.append([images.to_pil(t) for t in row])
    total = _all_reduce(sums, world)
    n = max(total["n"], 1.0)
    metrics = {"val_psnr": total["psnr"] / n, "val_ssim": total["ssim"] / n}
    if paired:
        metrics.update(val_input_psnr=total["in_psnr"] / n, val_input_ssim=total["in_ssim"] / n)
        metrics["val_gain_db"] = metrics["val_psnr"] - metrics["val_input_psnr"]
    return metrics, samples


def _save_checkpoint(variant, epoch: int, metrics: dict, spec: dict):
    import ray.train

    tmp = tempfile.mkdtemp(prefix="img2img-ckpt-")
    torch.save({"variant": variant.state_dict(), "epoch": epoch}, Path(tmp) / STATE_FILE)
    meta = {"variant": spec["variant"], "epoch": epoch, "step": variant.step, "metrics": metrics,
            "config": dataclasses.asdict(variant.config), "dataset": spec["dataset"]}
    (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2))
    return ray.train.Checkpoint.from_directory(tmp)


def _fail_once(spec: dict) -> None:
    """Test hook for FailureConfig: rank 0 dies once at `fail_at_step` (marker in the store)."""
    from cluster.settings import get_settings
    from cluster.storage import Storage

    storage = Storage(get_settings())
    marker = f"checkpoints/{spec['run_id']}/_failed_once"
    if not storage.exists(marker):
        storage.put_bytes(marker, b"1")
        raise RuntimeError(f"injected failure at step {spec['fail_at_step']} (test hook)")


def _arrow_fs():
    from cluster.storage import arrow_filesystem

    return arrow_filesystem()


def train_loop_per_worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    from jobs.tracking import RunLogger

    spec, paired, total_steps = cfg["spec"], cfg["paired"], cfg["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(spec["cpus_per_worker"])))
    torch.manual_seed(spec["seed"] + rank)
    device = ray.train.torch.get_device()
    variant = build_variant(spec["variant"], cfg["variant_config"], device=device,
                            amp="bf16" if device.type == "cuda" else None)
    variant.set_total_steps(total_steps)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()  # this run's own latest (after a worker failure)
    if checkpoint is None and cfg.get("resume_path"):  # --resume: another run's latest
        from cluster.storage import arrow_filesystem

        checkpoint = ray.train.Checkpoint(path=cfg["resume_path"], filesystem=arrow_filesystem())
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        variant.load_state_dict(state["variant"])
        start_epoch = state["epoch"] + 1
        log.info("resumed from epoch %d, step %d", state["epoch"], variant.step)
    elif cfg.get("init_path"):  # --init-from: a registered model's weights, fresh optimisers and schedule
        init = ray.train.Checkpoint(path=cfg["init_path"], filesystem=_arrow_fs())
        with init.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        variant.load_state_dict(state["variant"], with_optimizers=False)
        variant.step = 0
        variant.set_total_steps(total_steps)
        init_metrics, _ = validate(variant, paired, world)  # step 0: the parent's quality on this val set
        if rank == 0 and spec["run_id"]:
            from jobs.tracking import RunLogger

            RunLogger(cfg["tracking_uri"], spec["run_id"]).metrics(init_metrics, 0)
        log.info("initialised from %s: %s", cfg["init_path"], init_metrics)
    if world > 1:
        variant.wrap_networks(ray.train.torch.prepare_model)
    logger = RunLogger(cfg["tracking_uri"], spec["run_id"]) if rank == 0 and spec["run_id"] else None
    batch_size = variant.config.batch_size
    deadline = time.time() + spec["time_budget_s"] if spec.get("time_budget_s") else None
    for epoch in range(start_epoch, spec["epochs"]):
        t0, seen, logs = time.time(), 0, {}
        for batch in train_batches(paired, batch_size):
            if spec.get("fail_at_step") and rank == 0 and variant.step == spec["fail_at_step"]:
                _fail_once(spec)
            logs = variant.training_step(batch)
            seen += batch_size
            if logger and variant.step % spec["log_every"] == 0:
                logger.metrics({f"train_{k}": v for k, v in logs.items()}, variant.step)
            if spec.get("max_steps") and variant.step >= spec["max_steps"]:
                break
        throughput = _all_reduce({"samples": float(seen), "secs": time.time() - t0}, world)
        metrics, samples = validate(variant, paired, world)
        metrics.update({f"train_{k}": v for k, v in logs.items()})
        metrics.update(epoch=epoch, step=variant.step, lr=variant.lr,
                       samples_per_s=throughput["samples"] / max(throughput["secs"] / world, 1e-9))
        if logger:
            logger.metrics({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, variant.step)
            if samples:
                labels = SAMPLE_LABELS["paired" if paired else "unpaired"]
                logger.image(images.grid(samples, labels=labels), f"samples/epoch_{epoch:03d}.png")
        ckpt = _save_checkpoint(variant, epoch, metrics, spec) if rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt)
        done = bool(spec.get("max_steps") and variant.step >= spec["max_steps"])
        out_of_time = deadline is not None and time.time() > deadline
        if _any_worker(done or out_of_time, world):
            break
