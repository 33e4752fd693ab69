"""Datasets and trained models shared by the integration tests (built once per session)."""

from __future__ import annotations

import io
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def blur_dataset(stack):
    """Sample photos -> 4 random 64px crops each, Gaussian sigma 1.5 (paired, small)."""
    from cluster.settings import get_settings
    from jobs.data.ingest import IngestOptions, ingest

    opts = IngestOptions(name="blur", degrade="gaussian:1.5", size=64, crops=4, val_fraction=0.2, shard_rows=32)
    ingest(None, opts, get_settings())
    return "blur"


@pytest.fixture(scope="session")
def unpaired_dataset(stack, tmp_path_factory):
    """Two small domains: sample-photo crops (A) and their colour-inverted versions (B)."""
    from cluster.settings import get_settings
    from jobs.data.ingest import IngestOptions, ingest
    from jobs.data.sources import list_sample

    root = tmp_path_factory.mktemp("unpaired")
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir()
    for i, f in enumerate(list_sample()[:8]):
        img = Image.open(f.location).convert("RGB").resize((48, 48))
        split = "test" if i >= 6 else "train"
        img.save(root / f"{split}A" / f"{i}.png")
        Image.fromarray(255 - np.asarray(img)).save(root / f"{split}B" / f"{i}.png")
    ingest(str(root), IngestOptions(name="h2z-tiny", kind="unaligned", size=32, crops=4), get_settings())
    return "h2z-tiny"


@pytest.fixture(scope="module")
def endpoint(stack, demo_run):
    """The Serve endpoint URL, serving the quick demo's nafnet."""
    return stack.serve_url


def encoded(img, fmt="PNG", **kw) -> bytes:
    """A PIL image saved to bytes in `fmt` (save keyword arguments pass through)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def wait_job(client, job_id: str, timeout: float = 900) -> str:
    deadline = time.time() + timeout
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.time() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {status} after {timeout}s")
        time.sleep(2)
    return status


TINY = {
    "autoencoder": dict(config={"nf": 16}, image_size=64, batch_size=8, lr=1e-3, max_steps=24, checkpoint_every="6",
                        fail_at_step=7, log_every=1),
    # its inputs drawn afresh from the dataset's own spec (gaussian:1.5) on every crop
    "pix2pix": dict(config={"netG": "unet_64", "ngf": 8, "ndf": 8, "degrade": "auto"}, image_size=64, batch_size=4,
                    max_steps=4),
    "cyclegan": dict(config={"ngf": 8, "ndf": 8, "n_blocks": 2, "pool_size": 4}, image_size=32, batch_size=2,
                     max_steps=4),
    "dualgan": dict(config={"netG": "unet_32", "ngf": 8, "ndf": 8}, image_size=32, batch_size=2, max_steps=4),
}


def register_tiny_autoencoder(settings, name: str, seed: int, nf: int = 4) -> str:
    """A tiny random-weight autoencoder (`nf` base channels) registered as `name` in `settings`'
    MLflow (different weights per seed); -> its version. The process's MLflow tracking URI is
    left as it was."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from registry.tracking import log_generator
    from translator.variants import get_variant

    torch.manual_seed(seed)
    variant = get_variant("autoencoder").from_config({"nf": nf})
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    try:
        mlflow.set_experiment("integration")
        with mlflow.start_run():
            info = log_generator(variant.generator, variant.multiple, "autoencoder", {}, name)
    finally:
        mlflow.set_tracking_uri(before)
    version = str(info.registered_model_version)
    MlflowClient(settings.mlflow_uri).set_model_version_tag(name, version, "variant", "autoencoder")
    return version


def champion_claim_text(settings, model: str) -> bytes:
    """The body of `model`'s champion claim in the store (registry/claims.py), b"" when none is held."""
    from cluster.errors import Img2ImgError
    from cluster.storage import Storage
    from registry.claims import PREFIX

    try:
        return Storage(settings).get_bytes(f"{PREFIX}{model}.json")
    except Img2ImgError:  # not there (yet, or any more)
        return b""


def new_version(settings, model: str, tags: dict) -> str:
    """Another version of `model` registered from its v1's run (the same weights), with `tags`
    over v1's; -> its version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = MlflowClient(settings.mlflow_uri)
    v1 = client.get_model_version(model, "1")
    mv = mlflow.register_model(f"runs:/{v1.run_id}/model", model)
    for k, v in {**v1.tags, **tags}.items():
        client.set_model_version_tag(model, mv.version, k, v)
    return str(mv.version)


def untrained_val_psnr(settings, dataset: str, variant: str, **spec_kw) -> float:
    """The val set's PSNR (dB, pooled MSE: translator.metrics.SetTally) of `variant` as training starts it (rank 0's seed, untrained), scored as
    the training loop's validation does: paired output vs target; unpaired by cycle consistency
    (A -> B -> A and B -> A -> B vs the image). The bar a trained version must clear."""
    import pyarrow.parquet as pq
    import torch

    from cluster.storage import Storage
    from jobs.data.decode import _decode
    from jobs.training.spec import TrainSpec
    from registry.manifest import dataset_prefix, read_manifest
    from translator import tiling
    from translator.metrics import SetTally, to_unit
    from translator.precision import training_precision
    from translator.variants import build_variant

    spec = TrainSpec(dataset=dataset, variant=variant, **spec_kw)
    torch.manual_seed(spec.seed)  # what rank 0 does before building the variant, at the same precision
    amp, channels_last = training_precision(spec.precision, "cpu")
    model = build_variant(variant, spec.variant_config().__dict__, amp=amp, channels_last=channels_last)
    model.eval()
    tensor = lambda png: torch.from_numpy(_decode(png).transpose(2, 0, 1).copy())[None] * 2 - 1  # noqa: E731
    storage = Storage(settings)
    tally = SetTally()
    with torch.no_grad():
        for shard in read_manifest(storage, dataset).splits["val"]:
            table = pq.read_table(io.BytesIO(storage.get_bytes(dataset_prefix(dataset) + shard.path)))
            for row in table.to_pylist():
                if shard.domain is None:
                    x, ref = tensor(row["input"]), tensor(row["target"])
                    out = tiling.enhance(lambda t: model.translate(t), x, tile=512, overlap=32, multiple=model.multiple)
                else:
                    rev = shard.domain == "b"
                    x = ref = tensor(row["image"])
                    mid = tiling.enhance(lambda t, r=rev: model.translate(t, reverse=r), x, multiple=model.multiple)
                    out = tiling.enhance(lambda t, r=rev: model.translate(t, reverse=not r), mid, multiple=model.multiple)
                tally.add(to_unit(out), to_unit(ref))
    return tally.summary(paired=False)["psnr"]


@pytest.fixture(scope="session")
def trained(stack, blur_dataset, unpaired_dataset):
    """The four classic variants trained through the Jobs API with 2 CPU workers each
    (`nafnet` is trained by the demo fixture).
    -> {variant: {"job_id", "run_id", "status", "logs"}}."""
    from cluster.settings import get_settings
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    settings = get_settings()
    client = job_client(settings)
    out = {}
    # One after another: on 2 cores, concurrent jobs thrash (and their Ray Data executors can
    # starve each other of CPUs) far beyond the sum of their run times.
    for variant, kw in TINY.items():
        dataset = unpaired_dataset if variant in ("cyclegan", "dualgan") else blur_dataset
        spec = TrainSpec(dataset=dataset, variant=variant, workers=2, cpus_per_worker=0.5,
                         model_name=f"test-{variant}", experiment="integration", **kw)
        sub = submit(spec, settings)
        status = wait_job(client, sub["job_id"], timeout=300)
        out[variant] = {**sub, "status": status, "logs": client.get_job_logs(sub["job_id"])}
    return out


@pytest.fixture(scope="session")
def demo_run(stack, tmp_path_factory):
    """`img2img demo --quick`: the whole path once; the serving tests use its endpoint."""
    from cluster.settings import get_settings
    from img2img_demo.run import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo-output"
    # 45 s of training, not --quick's 120: the quick spec (sigma 1.5) gained 5.1 dB after 60 s here,
    # and the tests need the whole path and a gain, not the demo's full result.
    return run_demo(get_settings(), quick=True, budget_s=45, out_dir=out, say=lambda msg: None)


@contextmanager
def endpoint_restored(settings):
    """Whatever the endpoint serves on entry (model version, default options), it serves again on
    exit: tests that deploy their own model or options leave the shared endpoint as they found it."""
    from serving.deploy import deploy, status

    before = status(settings)
    try:
        yield
    finally:
        if before and before.get("model"):
            deploy(settings, f"{before['model']}/{before['version']}", wait_s=300)
