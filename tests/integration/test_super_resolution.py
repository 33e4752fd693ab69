"""Super-resolution on the real stack: 2x pairs ingested (synthesised with `down:2`, and from LR/ +
HR/ folders with one pair of the wrong ratio), a tiny `srvgg` trained a few steps, scored against
bicubic (training's validation and `img2img eval` agree), served at twice the size with the output
pixel limit enforced, and `enhance --local` likewise. One model is trained for the whole module."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.conftest import encoded, endpoint_restored, wait_job

MODEL = "test-sr"
TINY_SR = dict(variant="srvgg", config={"scale": "2", "num_feat": "8", "num_conv": "2"}, image_size=16,
               batch_size=4, max_steps=10, checkpoint_every="10", workers=1, cpus_per_worker=0.5)
MAX_PIXELS = 10_000  # a 37x53 input (7,844 output pixels at 2x) fits; a 60x60 one (14,400) does not


@pytest.fixture(scope="module")
def sr2(stack):
    """Sample photos -> 3 random 48 px HR crops each, their input shrunk 2x (24 px)."""
    from jobs.data.ingest import IngestOptions, ingest

    opts = IngestOptions(name="sr2", degrade="down:2", size=48, crops=3, val_fraction=0.2, shard_rows=32)
    return ingest(None, opts, stack).manifest


@pytest.fixture(scope="module")
def sr_model(stack, sr2):
    """A tiny 2x srvgg trained 10 steps through the Jobs API -> {"run_id", "version", "status"}."""
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec
    from registry.models import versions

    spec = TrainSpec(dataset="sr2", model_name=MODEL, experiment="integration", **TINY_SR)
    sub = submit(spec, stack)
    status = wait_job(job_client(stack), sub["job_id"], timeout=600)
    version = next((v.version for v in versions(stack, MODEL) if v.run_id == sub["run_id"]), None)
    return {**sub, "status": status, "version": version}


def val_pairs(stack, manifest) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The val split's (input, target) pairs, NCHW in [-1, 1], read straight from the shards."""
    import pyarrow.parquet as pq

    from cluster.storage import Storage
    from registry.manifest import dataset_prefix

    storage, out = Storage(stack), []
    for shard in manifest.shards("val"):
        table = pq.read_table(io.BytesIO(storage.get_bytes(dataset_prefix(manifest.name) + shard.path)))
        for row in table.to_pylist():
            x, y = (torch.from_numpy(np.asarray(Image.open(io.BytesIO(row[c])).convert("RGB"), np.float32) / 127.5 - 1)
                    .permute(2, 0, 1)[None] for c in ("input", "target"))
            out.append((x, y))
    return out


def test_synthesised_pairs_store_the_input_at_half_size(stack, sr2):
    assert sr2.scale == 2 and sr2.image_size == 48 and sr2.degradation == "down:2"
    pairs = val_pairs(stack, sr2)
    assert pairs and all(x.shape[-2:] == (24, 24) and y.shape[-2:] == (48, 48) for x, y in pairs)


def test_lr_hr_folders_keep_pairs_of_the_dataset_scale_and_list_the_others(stack, tmp_path):
    from jobs.data.ingest import IngestOptions, ingest

    rng = np.random.default_rng(0)
    for folder in ("LR", "HR"):
        (tmp_path / folder).mkdir()
    for i, (w, h, ratio) in enumerate([(20, 24, 2), (23, 17, 2), (30, 22, 2), (21, 25, 3)]):  # the last: 3x
        hr = Image.fromarray(rng.integers(0, 256, (h * ratio, w * ratio, 3), dtype=np.uint8))
        hr.save(tmp_path / "HR" / f"p{i}.png")
        hr.resize((w, h), Image.Resampling.BICUBIC).save(tmp_path / "LR" / f"p{i}.png")
    result = ingest(str(tmp_path), IngestOptions(name="sr-folders", kind="aligned", size=32, val_fraction=0),
                    stack)
    m = result.manifest
    assert m.scale == 2 and m.counts == {"train": 3}
    assert [s["file"] for s in result.skipped] == ["LR/p3.png"]
    assert "LR 21x25 and HR 63x75 are not a 2x pair" in result.skipped[0]["reason"]


@pytest.mark.parametrize("variant, config, words", [
    ("srvgg", {"scale": "4"}, "use --set scale=2"),
    ("nafnet", {"width": "8"}, "--variant srvgg --set scale=2"),
])
def test_a_scale_other_than_the_datasets_is_refused_before_submission(stack, sr2, variant, config, words):
    from cluster.errors import Img2ImgError
    from jobs.training.client import preflight
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset="sr2", variant=variant, config=config, image_size=16, max_steps=2)
    with pytest.raises(Img2ImgError, match=words.replace("-", r"\-")):
        preflight(spec, stack)


def test_validation_and_eval_score_against_bicubic_at_the_target_size(stack, sr2, sr_model):
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.client import evaluate
    from translator.metrics import SetTally, baseline, to_unit

    assert sr_model["status"] == "SUCCEEDED" and sr_model["version"]
    tally = SetTally()
    for x, y in val_pairs(stack, sr2):
        tally.add(to_unit(y), to_unit(y), to_unit(baseline(x, y.shape[-2:])))
    bicubic_psnr = tally.summary()["input_psnr"]
    logged = MlflowClient(stack.mlflow_uri).get_run(sr_model["run_id"]).data.metrics
    assert logged["val_input_psnr"] == pytest.approx(bicubic_psnr, abs=0.01)  # "input" means bicubic
    result = evaluate(stack, f"{MODEL}/{sr_model['version']}", "sr2", workers=1, cpus_per_worker=0.5)
    metrics = result["metrics"]
    assert metrics["input_psnr"] == pytest.approx(bicubic_psnr, abs=0.01)
    assert metrics["psnr"] == pytest.approx(logged["val_psnr"], abs=0.05)
    assert metrics["gain_db"] == pytest.approx(metrics["psnr"] - metrics["input_psnr"], abs=1e-6)


def test_the_endpoint_returns_the_upscaled_image_and_checks_the_output_size(stack, sr_model, tmp_path):
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    ref = f"{MODEL}/{sr_model['version']}"
    rng = np.random.default_rng(1)
    odd = Image.fromarray(rng.integers(0, 256, (53, 37, 3), dtype=np.uint8))  # 37 x 53
    with endpoint_restored(stack):
        deploy(stack, ref, ReplicaOptions(max_pixels=MAX_PIXELS), Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        url = stack.serve_url
        info = httpx.get(url + "/model", timeout=60).json()
        assert info["scale"] == 2 and info["version"] == sr_model["version"]
        r = httpx.post(url + "/enhance", content=encoded(odd), headers={"Content-Type": "image/png"}, timeout=120)
        assert r.status_code == 200, r.text
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (74, 106) and r.headers["X-Scale"] == "2"
        # tiles cut in input pixels, blended in output pixels: the same image as untiled
        tiled = httpx.post(url + "/enhance", params={"tile": 32, "overlap": 12}, content=encoded(odd),
                           headers={"Content-Type": "image/png"}, timeout=120)
        diff = np.abs(np.asarray(Image.open(io.BytesIO(tiled.content)), np.int16) - np.asarray(out, np.int16))
        # fp32 runtimes: one 8-bit level of rounding; bf16 (chosen where native) is itself within one of fp32
        levels = 1 if info["precision"] == "fp32" else 2
        assert tiled.status_code == 200 and diff.max() <= levels, (info["runtime"], info["precision"], diff.max())
        rgba = odd.copy()
        rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 37, dtype=np.uint8), (53, 1))))
        r = httpx.post(url + "/enhance", content=encoded(rgba), headers={"Content-Type": "image/png"}, timeout=120)
        up = Image.open(io.BytesIO(r.content))
        assert r.status_code == 200 and up.mode == "RGBA" and up.size == (74, 106)
        alpha = np.asarray(up.getchannel("A"), np.float32)
        assert alpha[:, :4].mean() < 20 and alpha[:, -4:].mean() > 235  # its own upscale, left to right
        big = Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8))  # 3,600 px in, 14,400 out
        r = httpx.post(url + "/enhance", content=encoded(big), headers={"Content-Type": "image/png"}, timeout=120)
        assert r.status_code == 413 and "120x120" in r.json()["error"] and "on the output" in r.json()["error"]


def test_enhance_local_upscales_too(stack, sr_model, tmp_path):
    from serving.local import enhance_locally

    src = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (53, 37, 3), dtype=np.uint8)).save(src)
    big = tmp_path / "big.png"
    Image.new("RGB", (60, 60)).save(big)
    done = enhance_locally(stack, f"{MODEL}/{sr_model['version']}", [src, big], tmp_path / "out",
                           max_pixels=MAX_PIXELS)
    assert done[0].error is None and Image.open(done[0].output).size == (74, 106)
    assert done[1].output is None and "on the output" in done[1].error


def test_a_4x_network_is_served_at_four_times_the_size_tiled_as_untiled(stack, tmp_path):
    """A 4x srvgg (untrained weights nudged off bicubic, registered with its descriptor: the
    serving path, not training, is under test; training at 4x is the 2x code with scale=4): an
    odd-sized photo comes back at exactly 4x, `X-Scale: 4`, `GET /model` says 4, the tiled answer
    equals the untiled one, and the output pixel limit is checked at 4x."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from registry.tracking import log_generator
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling
    from translator.descriptor import DESCRIPTOR_TAG
    from translator.variants import build_variant

    torch.manual_seed(4)
    v = build_variant("srvgg", {"scale": 4, "num_feat": 8, "num_conv": 2})
    with torch.no_grad():
        for p in v.generator.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow_uri)
    try:
        mlflow.set_experiment("integration")
        with mlflow.start_run():
            version = str(log_generator(v.generator, v.multiple, "srvgg", {}, "test-sr4").registered_model_version)
    finally:
        mlflow.set_tracking_uri(before)
    client = MlflowClient(stack.mlflow_uri)
    client.set_model_version_tag("test-sr4", version, DESCRIPTOR_TAG, v.descriptor.to_json())
    client.set_model_version_tag("test-sr4", version, "variant", "srvgg")
    odd = Image.fromarray(np.random.default_rng(3).integers(0, 256, (19, 23, 3), dtype=np.uint8))  # 23 x 19
    post = lambda img, **params: httpx.post(stack.serve_url + "/enhance", params=params, content=encoded(img),  # noqa: E731
                                            headers={"Content-Type": "image/png"}, timeout=120)
    with endpoint_restored(stack):
        deploy(stack, f"test-sr4/{version}", ReplicaOptions(max_pixels=MAX_PIXELS),
               Scaling(min_replicas=1, max_replicas=1), wait_s=300)
        info = httpx.get(stack.serve_url + "/model", timeout=60).json()
        assert info["scale"] == 4 and info["version"] == version
        r = post(odd)
        assert r.status_code == 200 and r.headers["X-Scale"] == "4", r.text
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (92, 76)
        tiled = post(odd, tile=16, overlap=4)
        diff = np.abs(np.asarray(Image.open(io.BytesIO(tiled.content)), np.int16) - np.asarray(out, np.int16))
        levels = 1 if info["precision"] == "fp32" else 2
        assert tiled.status_code == 200 and diff.max() <= levels, (info["runtime"], info["precision"], diff.max())
        r = post(Image.new("RGB", (30, 30)))  # 900 px in, 14,400 out: over the 10,000 limit at 4x only
        assert r.status_code == 413 and "120x120" in r.json()["error"] and "on the output" in r.json()["error"]
    # the registry's loader on every runtime, ONNX exported on the spot included: 4x the input's size
    from registry.loading import load

    for runtime, precision in (("torch", "fp32"), ("onnx", "auto")):
        loaded = load(stack.mlflow_uri, "test-sr4", version, device="cpu", runtime=runtime, precision=precision)
        assert loaded.runtime.name == runtime and loaded.runtime.run(torch.rand(1, 3, 19, 23)).shape == (1, 3, 76, 92)
