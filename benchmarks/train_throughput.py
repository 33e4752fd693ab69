"""Training samples/s per variant, like with like: the Ray Train job against a bare PyTorch loop
of the SAME precision and memory format (what `translator.precision.training_precision("auto")`
picks on this machine), the same allocator setting (`translator.allocator.retain_freed_memory`,
which the job's workers use), the same batch per worker and the same model, over one in-memory
batch.

- 1 worker (1 CPU) against a bare single-process loop with 1 thread;
- 2 workers (1 CPU each) against a bare DDP loop: 2 processes, 1 thread each, gloo, the same
  networks wrapped in torch's DistributedDataParallel (the all-reduce is data parallelism's own
  cost, not the platform's); a bare 2-thread loop at twice the batch is printed beside it.

The job's rate is its steady one: samples between its first logged step past WARMUP_STEPS and
its last in-loop log, over the wall-clock time between them (MLflow timestamps), so start-up,
validation and checkpoints are left out as the bare loop leaves out its warm-up; like the bare
loops', it is the best of 2 runs (the stack's own processes only ever slow a run down). The job's own
per-step profile (MLflow metrics `time_data_s`, `time_step_s`, `time_step_cpu_s`, `time_sync_s`, `time_log_s`)
says where the rest goes. Then (alone with `--bookkeeping`) the share of a job spent validating
and checkpointing, every epoch (`--checkpoint-every epoch`) vs the default cadence (`auto`).

`--variants pix2pix,dualgan` runs some variants only."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402

# CPU-sized configs; image size 64, batch per worker below.
CASES = {
    "nafnet": dict(config={}, batch=8),
    "autoencoder": dict(config={}, batch=16),
    "pix2pix": dict(config={"netG": "unet_64", "ngf": 32, "ndf": 32}, batch=4),
    "cyclegan": dict(config={"ngf": 16, "ndf": 16, "n_blocks": 6}, batch=2),
    "dualgan": dict(config={"netG": "unet_64", "ngf": 16, "ndf": 16}, batch=2),
}
STEPS = 60  # timed steps of a bare loop, after WARMUP_STEPS (the best of 2 runs counts, as for the jobs)
WARMUP_STEPS = 10
JOB_STEPS = 80


def _batch(variant, batch: int):
    import torch

    x = torch.rand(batch, 3, 64, 64) * 2 - 1
    return {"input": x, "target": x.flip(-1)} if variant.paired else {"a": x, "b": x.flip(-1)}


def _build(variant: str, config: dict):
    """The variant as a job builds it on this machine's CPU: same precision, memory format and
    allocator setting (freed memory kept in the process, as the job's workers keep it)."""
    from translator.allocator import retain_freed_memory
    from translator.precision import training_precision
    from translator.variants import build_variant

    retain_freed_memory()

    amp, channels_last = training_precision("auto", "cpu")
    return build_variant(variant, config, amp=amp, channels_last=channels_last)


def precision_label() -> str:
    from translator.precision import training_precision

    amp, channels_last = training_precision("auto", "cpu")
    return f"{amp or 'fp32'}{' channels_last' if channels_last else ''}"


def bare_loop(variant: str, config: dict, batch: int, threads: int = 1) -> tuple[float, float]:
    """-> (samples/s, CPU ms a step of the stepping thread) of one process with `threads` torch
    threads (with 2 threads the CPU ms leaves the second thread's out)."""
    import torch

    torch.set_num_threads(threads)
    v = _build(variant, config)
    data = _batch(v, batch)
    for _ in range(WARMUP_STEPS):
        v.training_step(data)
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(STEPS):
        v.training_step(data)
    return STEPS * batch / (time.perf_counter() - t0), 1000 * (time.thread_time() - c0) / STEPS


def _ddp_process(rank: int, world: int, port: int, variant: str, config: dict, batch: int, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    v = _build(variant, config)
    v.wrap_networks(DistributedDataParallel)  # what ray.train.torch.prepare_model does on a CPU
    data = _batch(v, batch)
    for _ in range(WARMUP_STEPS):
        v.training_step(data)
    dist.barrier()
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(STEPS):
        v.training_step(data)
    cpu_ms = 1000 * (time.thread_time() - c0) / STEPS
    dist.barrier()
    if rank == 0:
        out.put((STEPS * batch * world / (time.perf_counter() - t0), cpu_ms))
    dist.destroy_process_group()


def bare_ddp(variant: str, config: dict, batch: int, world: int = 2) -> tuple[float, float]:
    """-> (samples/s, rank 0's stepping thread's CPU ms a step) of `world` processes (1 thread
    each) training the variant under torch DDP (gloo)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_ddp_process, args=(world, port, variant, config, batch, out), nprocs=world,
                       start_method="spawn", join=True)
    return out.get(timeout=10)


def steady_rate(history) -> float:
    """samples/s between the first logged step past WARMUP_STEPS and the last in-loop log, from
    the MLflow history of the `samples` metric (the first entry per step: a later one at the same
    step is the validation's)."""
    first: dict[int, object] = {}
    for m in sorted(history, key=lambda m: m.timestamp):
        first.setdefault(m.step, m)
    points = [first[s] for s in sorted(first) if s >= WARMUP_STEPS and first[s].value > 0]
    if len(points) < 2:
        return float("nan")
    a, b = points[0], points[-1]
    return (b.value - a.value) / max((b.timestamp - a.timestamp) / 1000, 1e-9)


def ray_job(settings, dataset: str, variant: str, config: dict, batch: int, workers: int) -> dict:
    """One job of JOB_STEPS steps (1 CPU a worker) -> {"rate": steady samples/s, "ms": {part:
    ms per step}} with the parts of the job's loop (data wait, the step, the CPU its thread used
    in the step, the workers' sync, logging)."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=dataset, variant=variant, config=config, workers=workers, cpus_per_worker=1.0,
                     batch_size=batch, image_size=64, max_steps=JOB_STEPS, epochs=10_000, experiment="benchmarks",
                     model_name=f"bench-{variant}", keep_checkpoints=1)
    out = submit(spec, settings)
    status = wait(job_client(settings), out["job_id"], follow=False)
    if status != "SUCCEEDED":
        raise RuntimeError(f"{variant} job {status}")
    ml = MlflowClient(settings.mlflow_uri)
    m = ml.get_run(out["run_id"]).data.metrics
    steps = max(m.get("steps_run", JOB_STEPS), 2)
    ms = {part: 1000 * m.get(f"time_{part}_s", float("nan")) / steps
          for part in ("data", "step", "step_cpu", "sync", "log")}
    first = m.get("time_first_batch_s", 0.0)
    ms["data"] = 1000 * (m.get("time_data_s", float("nan")) - first) / (steps - 1)  # past the stream's start-up
    return {"rate": steady_rate(ml.get_metric_history(out["run_id"], "samples")), "ms": ms, "first_batch_s": first}


BOOKKEEPING_STEPS = 96


def bookkeeping_share(settings, dataset: str, cadence: str, steps: int = BOOKKEEPING_STEPS) -> dict[str, float]:
    """One autoencoder job on `dataset`; -> the job's own timings (MLflow metrics it logs):
    validation + checkpoint + MLflow time vs the fit and the whole job."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=dataset, variant="autoencoder", workers=2, cpus_per_worker=1.0, batch_size=16,
                     image_size=64, max_steps=steps, epochs=10_000, checkpoint_every=cadence,
                     experiment="benchmarks", model_name="bench-bookkeeping", keep_checkpoints=1)
    out = submit(spec, settings)
    status = wait(job_client(settings), out["job_id"], follow=False)
    if status != "SUCCEEDED":
        raise RuntimeError(f"bookkeeping job ({cadence}) {status}")
    m = MlflowClient(settings.mlflow_uri).get_run(out["run_id"]).data.metrics
    return {"validations": len(MlflowClient(settings.mlflow_uri).get_metric_history(out["run_id"], "val_psnr")),
            "steps": m["steps_run"], "book": m["time_bookkeeping_s"], "train": m["time_train_s"],
            "fit": m["time_fit_s"], "job": m["time_job_s"]}


def bookkeeping(settings, dataset: str = "bench-paired", steps: int = BOOKKEEPING_STEPS) -> None:
    """The share of a job spent validating/checkpointing: every epoch (the table's "before" row)
    against the default cadence, `auto` (its "after" row)."""
    from jobs.training.plan import DEFAULT_CADENCE_S

    rows = []
    for label, cadence in (("before: every epoch", "epoch"), (f"after: auto ({DEFAULT_CADENCE_S:.0f} s)", "auto")):
        r = bookkeeping_share(settings, dataset, cadence, steps)
        rows.append([label, r["steps"], r["validations"], r["book"], r["fit"], r["job"],
                     f"{100 * r['book'] / r['fit']:.1f}%", f"{100 * (r['job'] - r['train']) / r['job']:.1f}%"])
    report("train_bookkeeping", "Bookkeeping share of a training job (autoencoder, 2 workers, 64 px, CPU)",
           ["cadence", "steps", "validations+checkpoints", "bookkeeping s", "fit s", "job s",
            "bookkeeping / fit", "everything but steps / job"], rows,
           notes=f"{steps} steps of batch 16 per worker on bench-paired; timings are the job's own "
                 "MLflow metrics (time_bookkeeping_s, time_train_s, time_fit_s, time_job_s).")


def main() -> None:
    from cluster.storage import Storage
    from jobs.data.ingest import IngestOptions, ingest
    from registry.manifest import manifest_key

    settings = settings_with_stack()
    storage = Storage(settings)
    for name, kind in (("bench-paired", "synth"), ("bench-unpaired", "unaligned")):
        if storage.exists(manifest_key(name)):
            continue
        if kind == "synth":
            ingest(None, IngestOptions(name=name, size=64, crops=16, val_fraction=0.05), settings)
        else:
            import tempfile

            from PIL import Image

            from jobs.data.sources import list_sample

            root = Path(tempfile.mkdtemp())
            for d in ("trainA", "trainB"):
                (root / d).mkdir()
            for i, f in enumerate(list_sample()):
                Image.open(f.location).convert("RGB").save(root / ("trainA" if i % 2 else "trainB") / f"{i}.png")
            ingest(str(root), IngestOptions(name=name, kind="unaligned", size=64, crops=16), settings)
    if "--bookkeeping" in sys.argv:
        bookkeeping(settings, steps=int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv
                    else BOOKKEEPING_STEPS)
        return
    only = sys.argv[sys.argv.index("--variants") + 1].split(",") if "--variants" in sys.argv else list(CASES)
    rows, profile = [], []
    for variant in only:
        case = CASES[variant]
        dataset = "bench-paired" if variant in ("nafnet", "autoencoder", "pix2pix") else "bench-unpaired"
        b = case["batch"]
        # the best of 2 runs: the stack's own processes share the cores and only ever slow a run down
        (bare1, bare1_cpu), (ddp, ddp_cpu) = (max(f(variant, case["config"], b) for _ in range(2))
                                              for f in (bare_loop, bare_ddp))
        bare2t = max(bare_loop(variant, case["config"], 2 * b, threads=2)[0] for _ in range(2))
        # the job's rate, like the bare loops', is the best of 2 runs
        one = max((ray_job(settings, dataset, variant, case["config"], b, 1) for _ in range(2)), key=lambda r: r["rate"])
        two = max((ray_job(settings, dataset, variant, case["config"], b, 2) for _ in range(2)), key=lambda r: r["rate"])
        # the same 2-worker job decoding its PNGs on every read (no decode-once cache)
        png = ray_job(settings.model_copy(update={"decode_cache_share": 0.0}), dataset, variant, case["config"], b, 2)
        rows.append([variant, b, bare1, one["rate"], one["rate"] / bare1, ddp, two["rate"], two["rate"] / ddp, bare2t,
                     png["rate"], png["rate"] / ddp])
        for workers, job, bare, bare_cpu in ((1, one, bare1, bare1_cpu), (2, two, ddp, ddp_cpu)):
            profile.append([variant, workers, 1000 * b * workers / bare, bare_cpu, job["first_batch_s"],
                            *job["ms"].values(), 1000 * b * workers / job["rate"]])
    report("train_throughput", f"Training throughput, like with like (samples/s, 64 px, CPU, {precision_label()})",
           ["variant", "batch per worker", "bare loop 1 thread", "job 1 worker", "job / bare",
            "bare DDP 2x1 thread", "job 2 workers", "job / bare DDP", "bare loop 2 threads, 2x batch",
            "job 2 workers, PNGs decoded every read", "that job / bare DDP"], rows,
           notes=f"Every loop trains in {precision_label()} (what jobs pick on this CPU). Bare loops reuse one "
                 f"in-memory batch ({STEPS} steps after {WARMUP_STEPS}, the best of 2 runs); the job streams its dataset from the "
                 f"object store, {JOB_STEPS} steps, its steady rate past step {WARMUP_STEPS}, the best of 2 jobs (1 for the "
                 "last two columns); its training split "
                 "is decoded once and kept in Ray's object store (IMG2IMG_DECODE_CACHE_SHARE), the last two columns "
                 "the same job decoding the PNGs on every read (the share set to 0).")
    report("train_profile", "Where a job's step goes (ms per step, 64 px, CPU)",
           ["variant", "workers", "bare loop step", "bare loop step CPU", "job: first batch (s)", "job: data wait",
            "job: training step", "job: training step CPU", "job: workers' sync", "job: logging", "job: wall per step"],
           profile,
           notes="The job's own MLflow metrics time_data_s (less time_first_batch_s, the stream's start-up, "
                 "shown in seconds), time_step_s, time_step_cpu_s, time_sync_s, time_log_s over its steps; "
                 "the bare loop's step is 1 thread (1 worker) or the bare DDP loop (2 workers, rank 0). A step's "
                 "CPU is its thread's CPU time (time.thread_time): wall minus CPU is time the thread waited, for "
                 "a core another process held or for the all-reduce. Wall per step is from the job's steady rate.")
    if "--variants" not in sys.argv:
        bookkeeping(settings)


if __name__ == "__main__":
    main()
