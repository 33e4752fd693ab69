"""Training off the happy path on the real stack: datasets smaller than a batch, a 1-row val
split, unpaired domains of 3 vs 40 images, requests the cluster can never run, live progress,
stopping, and no temporary files left behind."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

pytestmark = pytest.mark.integration
AE = ["--variant", "autoencoder", "--set", "nf=8", "--image-size", "32", "--batch-size", "4",
      "--cpus-per-worker", "0.5"]


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    from jobs.data.sources import list_sample

    files = list_sample()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.open(files[i % len(files)].location).convert("RGB").resize((48, 48))
        out.append(Image.fromarray(np.roll(np.asarray(img), int(rng.integers(0, 48)), axis=1)))
    return out


def _ingest_paired(root: Path, name: str, files: int, val_fraction: float) -> str:
    from cluster.settings import get_settings
    from jobs.data.ingest import IngestOptions, ingest

    folder = root / name
    folder.mkdir()
    for i, img in enumerate(_photos(files)):
        img.save(folder / f"{i:02d}.png")
    ingest(str(folder), IngestOptions(name=name, size=32, val_fraction=val_fraction), get_settings())
    return name


@pytest.fixture(scope="session")
def small_sets(stack, tmp_path_factory):
    """Paired sets with 1, 3 and 13 training rows (1 val row each), and unpaired 3 vs 40 with val
    images of domain A only (testA/, no testB/, --val-fraction 0: the job validates A's cycle)."""
    from cluster.settings import get_settings
    from jobs.data.ingest import IngestOptions, ingest

    root = tmp_path_factory.mktemp("small")
    sets = {1: _ingest_paired(root, "rows-1", 2, 0.5), 3: _ingest_paired(root, "rows-3", 4, 0.25),
            13: _ingest_paired(root, "rows-13", 14, 1 / 14)}
    un = root / "a3-b40"
    for folder, n in (("trainA", 3), ("trainB", 40), ("testA", 1)):
        (un / folder).mkdir(parents=True)
        for i, img in enumerate(_photos(n, seed=len(folder) + n)):
            (Image.fromarray(255 - np.asarray(img)) if folder.endswith("B") else img).save(un / folder / f"{i}.png")
    ingest(str(un), IngestOptions(name="a3-b40", kind="unaligned", size=32, val_fraction=0), get_settings())
    sets["unpaired"] = "a3-b40"
    return sets


@pytest.fixture
def private_tmp(monkeypatch, tmp_path):
    """This process's temp files go to a private dir (other processes on the machine write
    /tmp too), so "nothing left behind" can be checked exactly."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _leftovers(*dirs: Path) -> set[str]:
    """Temp files of ours: checkpoint dirs and MLflow model copies (a dir holding an MLmodel).
    In /tmp, shared with other processes of this machine, only checkpoints of our own
    dataset ("rows-3") count."""
    found = set()
    for d in dirs:
        for entry in d.iterdir() if d.is_dir() else []:
            try:
                if d == Path("/tmp"):
                    meta = entry / "meta.json"
                    if entry.name.startswith("img2img-ckpt-") and meta.exists() and '"rows-3"' in meta.read_text():
                        found.add(str(entry))
                elif entry.name.startswith("img2img-") or (entry.is_dir() and any(entry.glob("**/MLmodel"))):
                    found.add(str(entry))
            except OSError:  # someone else's file, vanished or unreadable
                continue
    return found


def test_plans_for_1_3_13_rows_and_3_vs_40(stack, small_sets):
    """The arithmetic the job will run, computed from the real manifests before submission."""
    from jobs.training.client import preflight
    from jobs.training.plan import MIN_STEPS_PER_EPOCH
    from jobs.training.spec import TrainSpec

    for rows in (1, 3, 13):
        spec = TrainSpec(dataset=small_sets[rows], variant="autoencoder", workers=1, batch_size=16, epochs=3,
                         image_size=32)
        _, plan = preflight(spec, stack)
        assert plan.rows == {"train": rows} and plan.val_rows == 1
        assert plan.steps_per_epoch == MIN_STEPS_PER_EPOCH and plan.total_steps == 3 * MIN_STEPS_PER_EPOCH
    spec = TrainSpec(dataset="a3-b40", variant="cyclegan", workers=1, batch_size=2, epochs=1, max_steps=5,
                     image_size=32)
    _, plan = preflight(spec, stack)
    assert plan.rows == {"train_a": 3, "train_b": 40}
    assert plan.steps_per_epoch == 20 and plan.total_steps == 5  # --max-steps first


@pytest.mark.parametrize("args, message", [
    (["--dataset", "rows-1", "--workers", "2", "--image-size", "32"],
     "dataset 'rows-1' has 1 training rows but --workers 2 needs at least one per worker; use --workers 1"),
    (["--dataset", "a3-b40", "--variant", "cyclegan", "--workers", "4", "--image-size", "32"],
     "has 3 training images in domain A but --workers 4 needs at least one per worker; use --workers 3"),
    (["--dataset", "rows-13", "--workers", "9", "--image-size", "32"], "--workers 9 x --cpus-per-worker 1 = 9 CPUs, but the cluster at"),
    (["--dataset", "rows-3", "--resume", "nosuchrun"], "run 'nosuchrun' has no checkpoint to resume from"),
    (["--dataset", "rows-3", "--checkpoint-every", "often"], "--checkpoint-every 'often' is not a cadence"),
    (["--dataset", "rows-3", "--time-budget", "0"], "--time-budget must be a positive number"),
    # crops: the stored 32 px images against pix2pix's 256 px default, and its netG against 32 px
    (["--dataset", "rows-3", "--variant", "pix2pix"], "dataset 'rows-3' stores 32x32 images, smaller than the "
     "256 px training crops (pix2pix's default --image-size 256); use --image-size 32 --set netG=unet_32"),
    (["--dataset", "rows-3", "--variant", "pix2pix", "--image-size", "32"], "pix2pix cannot train on 32 px crops "
     "(--image-size 32): its generator (netG unet_256) takes sides that are a multiple of 256 px; use --set "
     "netG=unet_32"),
])
def test_impossible_requests_are_refused_before_submission(stack, small_sets, cli, args, message):
    from jobs.training.client import job_client

    before = len(job_client(stack).list_jobs())
    result = cli("train", *args)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert len(job_client(stack).list_jobs()) == before  # nothing reached the cluster


@pytest.fixture
def autoencoder_checkpoint(stack):
    """A checkpoint of run `fake-ae-run` in the store as training writes it (meta.json beside
    state.pt): an autoencoder nf=8 at step 2."""
    import dataclasses
    import json

    from cluster.storage import Storage
    from translator.config import make_config
    from translator.variants import get_variant

    cfg = make_config(get_variant("autoencoder").Config, {"nf": 8, "image_size": 32, "batch_size": 4})
    storage = Storage(stack)
    prefix = "checkpoints/fake-ae-run/checkpoint_2026-01-01_00-00-00.000000"
    storage.put_bytes(f"{prefix}/state.pt", b"not read before submission")
    storage.put_bytes(f"{prefix}/meta.json", json.dumps({"variant": "autoencoder", "step": 2,
                                                          "config": dataclasses.asdict(cfg)}).encode())
    return "fake-ae-run"


def test_resume_takes_the_checkpoints_variant_and_refuses_another(stack, small_sets, cli, autoencoder_checkpoint):
    from jobs.training.client import job_client, preflight
    from jobs.training.spec import TrainSpec

    run = autoencoder_checkpoint
    spec = TrainSpec(dataset="rows-3", variant="", resume=run, workers=1, max_steps=4)
    _, plan = preflight(spec, stack)  # no --variant: the checkpoint's, with its config
    assert spec.variant == "autoencoder" and spec.variant_config().nf == 8 and plan.batch_size == 4
    before = len(job_client(stack).list_jobs())
    for args, message in (([], f"--resume {run} trained autoencoder; it cannot be used as pix2pix"),
                          (["--variant", "autoencoder", "--set", "nf=16"],
                           f"--resume {run}: a different architecture (G.decoder.0.weight is shape [64, 32, 5, 5] "
                           "in the checkpoint, shape [128, 64, 5, 5] in this run)")):
        result = cli("train", "--dataset", "rows-3", "--resume", run, *(args or ["--variant", "pix2pix"]))
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert len(job_client(stack).list_jobs()) == before  # nothing reached the cluster


def test_3_rows_1_val_row_2_workers_trains_what_it_reports_with_live_progress(stack, small_sets, cli,
                                                                               private_tmp):
    """3 rows over 2 workers (1 each, batch 4: the rows repeat), 1 val row (validated by both
    workers), --max-steps 10 before --epochs 5: the job runs and reports exactly 10 steps,
    --follow shows progress lines (not Ray's logs), and no temp files are left behind."""
    from cluster.admission import RESOURCE, capacity
    from cluster.stack import Stack
    from serving.deploy import replica_reservation, status

    stack_tmp = Stack(stack).tmp_dir
    before = _leftovers(stack_tmp, Path("/tmp"))
    free_before = capacity(stack.ray_address, stack.ray_auth_headers()).free  # CPUs no job of this test holds
    result = cli("train", "--dataset", "rows-3", *AE, "--workers", "2", "--epochs", "5", "--max-steps", "10",
                 "--checkpoint-every", "5", "--follow")
    out = result.output
    assert result.exit_code == 0, out[-3000:]
    # Serve replicas may take the CPUs the job has just given back at once, though the dashboard's
    # report counts them for seconds after the job ended (asked: one replica more than the
    # endpoint has, as the ones it has give theirs back in the count)
    replicas = (status(stack) or {}).get("replicas", 0)
    assert replica_reservation(stack, free_before, replicas + 1) == {"resources": {RESOURCE: free_before}}
    assert "SUCCEEDED" in out and "repeats them" in out
    assert "ends after 10 steps (--max-steps, before --epochs ends it)" in out  # the limit that ends it, named
    assert re.search(r"step 10/10 \(100%\) \| val PSNR [0-9.]+ dB \([+-][0-9.]+ vs input\) \| loss [0-9.]+ \| "
                     r"epoch 1\.2", out), out[-2000:]
    assert "\x1b[" not in out and "Execution plan" not in out and "TrainingReport" not in out
    run_id = re.search(r"runs/([0-9a-f]{32})", out)[1]
    job_id = re.search(r"Submitted job (raysubmit_\w+)", out)[1]
    logs = cli("jobs", "logs", job_id).output
    assert "jobs.training.driver" in logs and "\x1b[" not in logs  # raw logs stay available, without colour codes
    # other stacks run on this machine: the job must talk to its own cluster only
    assert "Found multiple active Ray instances" not in logs
    ml = MlflowClient(stack.mlflow_uri)
    run = ml.get_run(run_id)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert (m["steps_run"], m["epochs_run"], m["samples_run"]) == (10, 10 / 8, 10 * 4 * 2)
    assert [x.step for x in ml.get_metric_history(run_id, "val_psnr")] == [5, 10]
    assert 0 < m["time_bookkeeping_s"] < m["time_fit_s"]
    # the step's own thread's CPU, beside its wall time (the rest: waiting for a core or the all-reduce)
    assert 0 < m["time_step_cpu_s"] <= m["time_step_s"] + 0.05
    # a load like `serve deploy`/`reload`/`enhance --local` do, then nothing of ours is left over
    from registry.loading import load

    version = ml.search_model_versions("name='rows-3'")[0].version
    # the job's verdict on the model is in the follow output, not only in `jobs logs`
    worse = float(ml.get_model_version("rows-3", version).tags["val_gain_db"]) < 0
    assert ("SUCCEEDED, but:" in out and "WORSE than its input" in out) == worse, out[-1500:]
    for args in ([], ["--follow"]):  # and when asked about later, the job having ended
        later = cli("jobs", "status", job_id, *args)
        assert later.exit_code == 0 and ("SUCCEEDED, but:" in later.output) == worse, later.output
        assert ("WORSE than its input" in later.output) == worse, later.output
    load(stack.mlflow_uri, "rows-3", str(version))
    assert _leftovers(stack_tmp, Path("/tmp"), private_tmp) - before == set()


def test_unpaired_3_vs_40_trains_on_one_worker(stack, small_sets):
    """...with no domain-B val rows (Ray Train V2 has no val_b stream to hand the workers)."""
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec
    from tests.integration.conftest import wait_job

    spec = TrainSpec(dataset="a3-b40", variant="cyclegan", workers=1, cpus_per_worker=0.5, image_size=32,
                     batch_size=2, max_steps=6, config={"ngf": 8, "ndf": 8, "n_blocks": 2, "pool_size": 4},
                     model_name="test-a3-b40", experiment="integration")
    sub = submit(spec, stack)
    status = wait_job(job_client(stack), sub["job_id"], timeout=600)
    assert status == "SUCCEEDED", job_client(stack).get_job_logs(sub["job_id"])[-3000:]
    m = MlflowClient(stack.mlflow_uri).get_run(sub["run_id"]).data.metrics
    assert (m["steps_run"], m["samples_run"], m["epochs_run"]) == (6, 12, 6 / 20)
    assert "val_psnr" in m  # A -> B -> A cycle of the one testA/ image


def test_stop_running_job_ends_its_run_killed_and_stop_again_says_so(stack, small_sets, cli):
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset="rows-13", variant="autoencoder", workers=1, cpus_per_worker=0.5, image_size=32,
                     batch_size=4, config={"nf": 8}, epochs=10_000, experiment="integration", model_name="test-stop")
    sub = submit(spec, stack)
    client = job_client(stack)
    deadline = time.time() + 120
    while str(client.get_job_status(sub["job_id"])).split(".")[-1] == "PENDING" and time.time() < deadline:
        time.sleep(1)
    r = cli("jobs", "ls")
    assert re.search(r"RUNNING.*so far", " ".join(r.output.split())), r.output
    r = cli("jobs", "stop", sub["job_id"])
    assert r.exit_code == 0 and f"Stopped {sub['job_id']}" in r.output
    assert MlflowClient(stack.mlflow_uri).get_run(sub["run_id"]).info.status == "KILLED"
    r = cli("jobs", "stop", sub["job_id"])
    assert r.exit_code == 0 and "had already ended: STOPPED; nothing to stop" in " ".join(r.output.split())
    # following a job that did not succeed exits 1, naming its final status (as `train --follow` does)
    for command in ("status", "logs"):
        r = cli("jobs", command, sub["job_id"], "--follow")
        assert r.exit_code == 1 and f"Error: job {sub['job_id']} STOPPED" in " ".join(r.output.split()), r.output
    assert os.environ.get("IMG2IMG_STATE_DIR")  # the stack under test, not a user's
