"""`img2img batch` with videos, and with a worker killed: a 2-second synthetic video with an
audio track comes back with the same frame count, rate, audio stream and metadata, its frames
enhanced by the model; a video inside a prefix is enhanced beside its images; staging is gone
after success; a worker SIGKILLed mid-job still leaves every output, each once."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import av
import numpy as np
import pytest
from PIL import Image

from cluster.storage import Storage
from tests.integration.conftest import encoded, register_tiny_autoencoder
from tests.videos import describe, synthetic_video

MODEL = "batch-video-tiny"


@pytest.fixture(scope="module")
def video_model(stack):
    return register_tiny_autoencoder(stack, MODEL, seed=13)


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    from img2img_cli.app import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_a_local_video_comes_back_with_its_frames_rate_audio_and_metadata(stack, video_model, cli, tmp_path):
    from registry.loading import load
    from translator import OVERLAP, TILE
    from translator.compute import enhance_alone

    src = synthetic_video(tmp_path / "movie.mp4")
    dst = tmp_path / "movie-enhanced.mp4"
    result = cli("batch", src, "-o", dst, "--model", f"{MODEL}/{video_model}", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert (summary["written"], summary["failed"], summary["frames"]) == (1, 0, 20)
    assert describe(dst) == describe(src)  # 20 frames, 10 fps, 48x32 (scale 1), aac 48 kHz, title
    # the frames are the model's: the middle frame is the endpoint path's output up to the video codec's loss
    model = load(stack.mlflow_uri, MODEL, video_model, runtime="torch", threads=1, precision="fp32")
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        fin = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)][10]
        fout = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)][10]
    want = np.asarray(Image.open(io.BytesIO(
        enhance_alone(encoded(Image.fromarray(fin)), 10**8, model, "AtoB", "png", TILE, OVERLAP)[0])).convert("RGB"))
    assert _psnr(fout, want) > 30 > _psnr(fout, fin)
    # the staging of the local file and of the video's chunks is gone
    assert [o.key for o in Storage(stack).list("batch/") if "movie" in o.key or o.key.startswith("batch/video/")] == []


def test_a_video_inside_a_prefix_is_enhanced_beside_its_images_and_a_rerun_skips_it(stack, video_model, cli, tmp_path):
    store = Storage(stack)
    store.put_bytes("mixed/clips/m.mkv", synthetic_video(tmp_path / "m.mkv", seconds=1).read_bytes())
    store.put_bytes("mixed/a.png", encoded(Image.new("RGB", (20, 12), (90, 30, 200))))
    args = ("batch", f"s3://{stack.bucket}/mixed/", "-o", f"s3://{stack.bucket}/mixed-out/",
            "--model", f"{MODEL}/{video_model}", "--follow", "--json")
    first = cli(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output[first.output.index("{"):])
    assert (summary["written"], summary["failed"], summary["frames"]) == (2, 0, 10)
    (tmp_path / "m-out.mkv").write_bytes(store.get_bytes("mixed-out/clips/m.mkv"))
    assert describe(tmp_path / "m-out.mkv") == describe(tmp_path / "m.mkv")
    again = cli(*args)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output[again.output.index("{"):])
    assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 2, 0)
    assert not store.list("batch/video/")


def test_a_worker_killed_mid_job_leaves_every_output_once(stack, video_model):
    from ray.util.state import list_actors

    from jobs.batch import client
    from jobs.training.client import job_client

    store = Storage(stack)
    rng = np.random.default_rng(3)
    n = 64
    for i in range(n):
        store.put_bytes(f"kill-in/{i:03d}.png", encoded(Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8))))
    req = client.prepare(stack, f"s3://{stack.bucket}/kill-in/", f"s3://{stack.bucket}/kill-out/",
                         f"{MODEL}/{video_model}")
    job_id = client.submit(stack, req)
    stack.apply_ray_env()
    jobs = job_client(stack)
    killed = None
    while killed is None and str(jobs.get_job_status(job_id).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        done = len(store.list("kill-out/"))
        if done >= 1:  # Ray Data's actor pool worker: "MapWorker(MapBatches(Enhancer))"
            workers = [a for a in list_actors(address=stack.ray_address, filters=[("state", "=", "ALIVE")])
                       if "Enhancer" in a.class_name]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed = done
        time.sleep(0.2)
    assert killed is not None and killed < n, f"the job ended before a worker could be killed ({killed} outputs)"
    summary = client.follow(stack, job_id)
    assert summary["files"] == n and summary["failed"] == 0 and summary["written"] + summary["skipped"] == n
    manifest = json.loads(store.get_bytes("kill-out/batch-manifest.json"))
    assert sorted(f["key"] for f in manifest["files"]) == [f"kill-in/{i:03d}.png" for i in range(n)]
    outputs = sorted(o.key for o in store.list("kill-out/") if o.key.endswith(".png"))
    assert outputs == [f"kill-out/{i:03d}.png" for i in range(n)]
    for key in outputs[:: max(1, n // 8)]:
        assert Image.open(io.BytesIO(store.get_bytes(key))).size == (256, 256)
