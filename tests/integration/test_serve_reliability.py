"""Serving that loses nothing and keeps the photo, against the real endpoint on the session's
stack: bit depth, colour profile and frames round trips, every bad-input class answered 4xx,
both directions of an unpaired model, no lost request when a replica is SIGKILLed, and a
planned replica stop that lets a long request finish."""

import io
import os
import signal
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageCms

from benchmarks.bad_inputs import bad_inputs
from tests.integration.conftest import encoded, register_tiny_autoencoder

pytestmark = pytest.mark.integration
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()




def post(url, body, ctype="image/png", **kw):
    return httpx.post(url + "/enhance", content=body, headers={"Content-Type": ctype}, timeout=300, **kw)


def test_16bit_value_range_icc_exif_and_frames_survive_the_endpoint(endpoint):
    twelve = (np.arange(48 * 40).reshape(48, 40) * 2).astype(np.uint16)  # 12-bit data: 1920 levels, 0-3838
    r = post(endpoint, encoded(Image.fromarray(twelve)))
    assert r.status_code == 200 and r.headers["x-bit-depth"] == "16"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.dtype == np.uint16 and out.shape == (48, 40)
    assert 3000 < out.max() <= 4095 and len(np.unique(out)) > 256  # its range, not crushed, not 8-bit

    ramp = np.linspace(0, 65535, 32 * 32 * 3).astype(np.uint16).reshape(32, 32, 3)
    r = post(endpoint, cv2.imencode(".png", ramp)[1].tobytes())
    assert r.status_code == 200 and r.content[24] == 16
    r = post(endpoint, cv2.imencode(".tiff", ramp)[1].tobytes(), "image/tiff", params={"format": "tiff"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera maker"
    for fmt in ("png", "jpeg"):
        r = post(endpoint, encoded(rgb, "JPEG", icc_profile=SRGB, exif=exif), "image/jpeg", params={"format": fmt})
        out = Image.open(io.BytesIO(r.content))
        assert r.status_code == 200 and out.size == (30, 50) and out.info.get("icc_profile") == SRGB
        assert out.getexif().get(0x010F) == "Camera maker" and 0x0112 not in out.getexif()
    assert post(endpoint, encoded(rgb)).headers["x-bit-depth"] == "8"

    frames = [Image.new("RGB", (20, 16), (i * 80, 40, 0)) for i in range(3)]
    r = post(endpoint, encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif")
    assert r.status_code == 200 and r.headers["x-input-frames"] == "3"


def test_every_bad_input_class_gets_its_4xx_and_the_replica_survives(endpoint):
    for name, case in bad_inputs().items():
        r = httpx.post(endpoint + "/enhance", content=case["content"], files=case["files"], params=case["params"],
                       headers={} if case["files"] else {"Content-Type": case["ctype"]}, timeout=120)
        assert (r.status_code, "error" in r.json()) == (case["status"], True), name
    assert httpx.get(endpoint + "/healthz", timeout=30).status_code == 200


def test_paired_model_offers_one_direction(endpoint):
    assert httpx.get(endpoint + "/model", timeout=30).json()["directions"] == ["AtoB"]
    r = post(endpoint, encoded(Image.new("RGB", (16, 16))), params={"direction": "BtoA"})
    assert r.status_code == 400 and "paired" in r.json()["error"]


@pytest.fixture(scope="module")
def two_way_model(stack):
    """An (untrained, tiny) CycleGAN registered through the training job's own logging code:
    what `img2img train --variant cyclegan` registers, without minutes of training."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from registry.tracking import log_generator
    from translator.variants import get_variant

    torch_seed = __import__("torch").manual_seed(0)  # noqa: F841 (different G_A and G_B, reproducibly)
    variant = get_variant("cyclegan").from_config({"ngf": 8, "n_blocks": 2})
    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_experiment("integration")
    with mlflow.start_run():
        info = log_generator(variant.generator, variant.multiple, "cyclegan", {}, "test-two-way",
                             reverse=variant.reverse_generator)
    version = str(info.registered_model_version)
    client = MlflowClient(stack.mlflow_uri)
    for k, v in {"variant": "cyclegan", "multiple": str(variant.multiple)}.items():
        client.set_model_version_tag("test-two-way", version, k, v)
    return f"test-two-way/{version}"


def test_unpaired_model_both_directions_locally(stack, cli, two_way_model, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(src)
    outs = {}
    for direction in ("AtoB", "BtoA"):
        r = cli("enhance", src, "--local", "--model", two_way_model, "--direction", direction, "-o", tmp_path / direction)
        assert r.exit_code == 0, r.output
        outs[direction] = np.asarray(Image.open(tmp_path / direction / "a.enhanced.png"))
    assert outs["AtoB"].shape == (40, 36, 3) and not np.array_equal(outs["AtoB"], outs["BtoA"])


def test_killed_replica_loses_no_request_and_both_directions_are_served(stack, two_way_model, tmp_path):
    from cluster.settings import get_settings
    from serving.client import enhance_files
    from serving.deploy import deploy, replica_pids
    from serving.options import Scaling

    settings = get_settings()
    deploy(settings, two_way_model, scaling=Scaling(min_replicas=2, max_replicas=2), wait_s=240)
    info = httpx.get(stack.serve_url + "/model", timeout=30).json()
    assert info["directions"] == ["AtoB", "BtoA"] and info["request_timeout_s"] >= 60
    body = encoded(Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    a, b = (post(stack.serve_url, body, params={"direction": d}) for d in ("AtoB", "BtoA"))
    assert (a.status_code, b.status_code, b.headers["x-direction"]) == (200, 200, "BtoA") and a.content != b.content

    deadline = time.time() + 120
    while len(pids := replica_pids(settings)) < 2 and time.time() < deadline:
        time.sleep(2)
    assert len(pids) == 2
    files = []
    for i in range(24):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(files[-1])
    killed = []

    def kill_once(outcome):
        if not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    results = enhance_files(files, tmp_path / "out", stack.serve_url, parallel=8, on_done=kill_once,
                            direction="BtoA")
    assert killed and [r.error for r in results if r.error] == []
    assert all(r.output.exists() for r in results)


def test_a_deleted_and_reregistered_model_is_not_served_stale(stack):
    """Deleting a registered model and registering it again reuses version 1 for other weights:
    `serve deploy` must load the new weights, not keep the replica's old ones."""
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from serving.options import Scaling

    settings, name = get_settings(), "test-reregistered"
    body = encoded(Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 48, 3), dtype=np.uint8)))
    outputs = []
    for seed in (1, 2):
        assert register_tiny_autoencoder(stack, name, seed) == "1"
        deploy(settings, f"{name}/1", scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=240)
        r = post(stack.serve_url, body)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        outputs.append(r.content)
        MlflowClient(stack.mlflow_uri).delete_registered_model(name)
    assert outputs[0] != outputs[1]


def test_planned_replica_stop_lets_a_long_request_finish(stack, demo_run):
    """A redeploy replaces the only replica while it runs a long request: that request finishes,
    and requests sent one after another all through the replacement, by a client that never
    retries (a browser, curl), are each answered 200."""
    from cluster.settings import get_settings
    from serving.deploy import deploy, status
    from serving.options import Scaling

    settings = get_settings()
    model = f"{demo_run.model}@champion"
    out = deploy(settings, model, scaling=Scaling(min_replicas=1, max_replicas=1, num_cpus=0.45), wait_s=240)
    assert out["graceful_shutdown_timeout_s"] > out["request_timeout_s"] >= 60
    assert status(settings)["graceful_shutdown_timeout_s"] == out["graceful_shutdown_timeout_s"]
    big = encoded(Image.fromarray(np.random.default_rng(3).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)))
    small = encoded(Image.fromarray(np.random.default_rng(6).integers(0, 256, (32, 48, 3), dtype=np.uint8)))
    result, answers, stop = {}, [], threading.Event()

    def one_after_another():
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                try:
                    r = client.post(stack.serve_url + "/enhance", content=small, headers={"Content-Type": "image/png"})
                    answers.append(r.status_code)
                except httpx.HTTPError as e:
                    answers.append(type(e).__name__)

    worker = threading.Thread(target=lambda: result.update(r=post(stack.serve_url, big, params={"tile": 256})))
    steady = threading.Thread(target=one_after_another)
    worker.start()
    steady.start()
    try:
        time.sleep(3)  # the request is running on the only replica
        # Back to the standard deployment: a new num_cpus replaces the replica (a planned stop).
        deploy(settings, model, wait_s=240)
        worker.join(timeout=600)
        time.sleep(2)  # and a little while on the replacement alone
    finally:
        stop.set()
        steady.join(timeout=300)
    assert result["r"].status_code == 200
    assert Image.open(io.BytesIO(result["r"].content)).size == (2000, 1500)
    assert len(answers) > 3 and set(answers) == {200}, answers
