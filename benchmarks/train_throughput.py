"""Training samples/s per variant: the Ray Train job (2 DDP workers, and 1) vs a bare
single-process PyTorch loop over the same model and in-memory data (ratio = Ray overhead).
Then (alone with `--bookkeeping`) the share of a job spent validating and checkpointing,
every epoch (`--checkpoint-every epoch`) vs the default cadence (`auto`)."""

from __future__ import annotations

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
STEPS = 30


def bare_loop(variant: str, config: dict, batch: int, threads: int = 1) -> float:
    import torch

    from translator.variants import build_variant

    torch.set_num_threads(threads)
    v = build_variant(variant, config)
    x = torch.rand(batch, 3, 64, 64) * 2 - 1
    data = {"input": x, "target": x.flip(-1)} if v.paired else {"a": x, "b": x.flip(-1)}
    for _ in range(3):
        v.training_step(data)
    t0 = time.time()
    for _ in range(STEPS):
        v.training_step(data)
    return STEPS * batch / (time.time() - t0)


def ray_job(settings, dataset: str, variant: str, config: dict, batch: int, workers: int) -> float:
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=dataset, variant=variant, config=config, workers=workers, cpus_per_worker=1.0,
                     batch_size=batch, image_size=64, epochs=2, checkpoint_every="epoch", experiment="benchmarks",
                     model_name=f"bench-{variant}", keep_checkpoints=1)
    out = submit(spec, settings)
    status = wait(job_client(settings), out["job_id"], follow=False)
    if status != "SUCCEEDED":
        raise RuntimeError(f"{variant} job {status}")
    history = MlflowClient(settings.mlflow_uri).get_metric_history(out["run_id"], "samples_per_s")
    return max(m.value for m in history)  # the second epoch: workers warm


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
    rows = []
    for variant, case in CASES.items():
        dataset = "bench-paired" if variant in ("nafnet", "autoencoder", "pix2pix") else "bench-unpaired"
        bare = bare_loop(variant, case["config"], case["batch"])
        bare2 = bare_loop(variant, case["config"], case["batch"] * 2, threads=2)
        two = ray_job(settings, dataset, variant, case["config"], case["batch"], 2)
        one = ray_job(settings, dataset, variant, case["config"], case["batch"], 1) if variant in ("nafnet", "autoencoder") else float("nan")
        rows.append([variant, bare, bare2, one, two, two / bare2])
    bookkeeping(settings)
    report("train_throughput", "Training throughput (samples/s, 64 px, CPU)",
           ["variant", "bare loop 1 thread", "bare loop 2 threads", "Ray Train 1 worker", "Ray Train 2 workers",
            "Ray 2w / bare 2t"], rows,
           notes="Ray numbers are epoch samples/s reported by the job (streaming from S3, DDP all-reduce); "
                 "bare loops reuse one in-memory batch. 1-worker runs only for nafnet and autoencoder.")


if __name__ == "__main__":
    main()
