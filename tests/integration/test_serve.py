"""The Ray Serve endpoint on the session's Ray head, serving a model from the real registry
(the one the quick demo trained and promoted), plus registry promotion logic."""

import asyncio
import io
import json
import platform
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter

from cluster.errors import Img2ImgError
from registry import models as registry
from tests.integration.conftest import encoded as png
from tests.integration.conftest import new_version as _new_version

pytestmark = pytest.mark.integration




def post(url, body, ctype="image/png", headers=None, **kw):
    return httpx.post(url + "/enhance", content=body, headers={"Content-Type": ctype, **(headers or {})},
                      timeout=120, **kw)


def test_enhance_a_real_photo_same_size_and_sharper(endpoint, demo_run):
    from cluster.settings import get_settings
    from img2img_demo.run import _held_out_photos, _photo, _score, dataset_degradation
    from translator import degrade, images

    path = _held_out_photos(get_settings(), demo_run.dataset)[0]
    clean = _photo(path)[:, :301]  # an odd width on purpose
    blurred = degrade.apply(dataset_degradation(get_settings(), demo_run.dataset), clean, seed=7)
    r = post(endpoint, png(images.from_array(blurred)))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-model-variant"] == "nafnet" and r.headers["x-model-version"] == demo_run.version
    out = images.to_array(Image.open(io.BytesIO(r.content)))
    assert out.shape == clean.shape
    assert _score(out, clean)[0] > _score(blurred, clean)[0]


def test_multipart_formats_and_odd_modes(endpoint):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    r = httpx.post(endpoint + "/enhance", files={"file": ("a.png", png(rgb), "image/png")}, params={"format": "jpeg"},
                   timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    out = Image.open(io.BytesIO(post(endpoint, png(rgba)).content))
    assert out.mode == "RGBA" and out.getpixel((0, 0))[3] == 128 and out.size == (50, 40)
    gray16 = Image.fromarray((rng.integers(0, 65535, (30, 20))).astype(np.uint16))
    out = Image.open(io.BytesIO(post(endpoint, png(gray16)).content))
    assert out.mode == "I;16" and out.size == (20, 30)  # 16-bit grey stays 16-bit grey
    assert np.asarray(out).max() > 255
    cmyk = rgb.convert("CMYK")
    assert post(endpoint, png(cmyk, "JPEG"), "image/jpeg").status_code == 200
    exif = Image.Exif()
    exif[0x0112] = 6
    out = Image.open(io.BytesIO(post(endpoint, png(rgb, "JPEG", exif=exif), "image/jpeg").content))
    assert out.size == (40, 50)  # rotated as displayed
    tiny = Image.new("RGB", (1, 1), "red")
    assert Image.open(io.BytesIO(post(endpoint, png(tiny)).content)).size == (1, 1)


@pytest.mark.parametrize("body, ctype, status", [
    (b"", "image/png", 400),
    (b"definitely not an image", "image/png", 415),
    (None, "image/png", 400),  # truncated PNG
    (b"hello", "text/plain", 415),
    (None, "image/bmp", 413),  # 80000 x 1000 = 80 MP > 72 MP (1-bit BMP: a 10 MB body)
])
def test_bad_input_gets_json_errors_and_the_replica_survives(endpoint, body, ctype, status):
    if body is None and status == 400:
        body = png(Image.new("RGB", (64, 64), "blue"))[:60]
    if body is None and status == 413:
        body = png(Image.new("1", (80000, 1000)), "BMP")
    r = post(endpoint, body, ctype)
    assert r.status_code == status
    assert "error" in r.json()
    if status == 413:  # says how to raise the limit
        assert "raise it with: img2img serve deploy --model NAME@champion --max-megapixels 80" in r.json()["error"]
    assert httpx.get(endpoint + "/healthz", timeout=30).status_code == 200


def test_a_body_over_the_byte_limit_is_refused_unread(endpoint):
    from serving.body import max_body_bytes

    limit = max_body_bytes(httpx.get(endpoint + "/model", timeout=30).json()["max_pixels"])
    r = post(endpoint, bytes(limit + 1))
    assert r.status_code == 413 and "MB limit" in r.json()["error"]


def test_model_endpoint_and_query_validation(endpoint, demo_run):
    info = httpx.get(endpoint + "/model", timeout=30).json()
    assert info["name"] == demo_run.model and info["variant"] == "nafnet" and "val_psnr" in info["metrics"]
    # Replicas keep freed activations instead of page-faulting them in on every request (glibc).
    assert info["retains_freed_memory"] is (platform.libc_ver()[0] == "glibc")
    r = post(endpoint, png(Image.new("RGB", (8, 8))), params={"tile": 3})
    assert r.status_code == 400
    r = post(endpoint, png(Image.new("RGB", (8, 8))), params={"format": "gif"})
    assert r.status_code == 400


def test_requests_enter_through_haproxy_listening_on_the_stack_host_only(stack, cli, endpoint):
    """The embedded stack's Serve ingress is HAProxy (where `ray[serve]` bundles it), with every
    listener of it, its stats page and metrics exporter included, on 127.0.0.1."""
    import psutil

    from cluster.stack import Stack

    haproxies = [p for p in Stack(stack)._ray_processes() if p.name() == "haproxy"]
    listening = {(c.laddr.ip, c.laddr.port) for p in haproxies for c in _listening(p)}
    assert ("127.0.0.1", stack.port_of(stack.serve_url)) in listening and len(listening) >= 3  # + stats, metrics
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert "Serve ingress haproxy" in json.loads(cli("stack", "status", "--json").stdout)[2]["mode"]
    assert httpx.get(endpoint + "/model", timeout=30).status_code == 200
    # Straight to a replica's own HTTP server, on a port of this stack's block (another stack's
    # replicas, or its fallback proxy, can never answer for this one).
    ports, (low, high) = Stack(stack).ingress_ports({})
    ours = {(c.laddr.port, p.name()) for p in psutil.process_iter(["name"]) if p.name().startswith("ray::")
            for c in _listening(p)}
    assert any(low <= port <= high and "ServeRepl" in name for port, name in ours), sorted(ours)
    assert any(port == ports["serve_fallback_http"] and "Proxy" in name for port, name in ours), sorted(ours)


def _listening(proc):
    import psutil

    try:
        return [c for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_concurrent_clients_are_served(endpoint):
    img = png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 260, 3), dtype=np.uint8)))

    async def burst():
        async with httpx.AsyncClient(timeout=180) as client:
            rs = await asyncio.gather(*(client.post(endpoint + "/enhance", content=img,
                                                    headers={"Content-Type": "image/png"},
                                                    params={"tile": 128, "overlap": 16}) for _ in range(12)))
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 12


def test_status_shows_autoscaling_and_version(stack, cli, demo_run):
    r = cli("serve", "status")
    assert r.exit_code == 0, r.output
    assert "RUNNING" in r.output and "1-2 @ 2.0" in r.output and f"v{demo_run.version}" in r.output
    data = json.loads(cli("serve", "status", "--json").stdout)
    assert data["status"] == "RUNNING" and data["version"] == str(demo_run.version) and data["url"] == stack.serve_url
    assert data["autoscaling"] == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2.0}


def test_api_key_required_when_configured(stack, cli, demo_run, monkeypatch):
    monkeypatch.setenv("IMG2IMG_SERVE_API_KEY", "s3cret-key-for-tests")
    from cluster.settings import get_settings
    from serving.deploy import deploy

    try:
        deploy(get_settings(), f"{demo_run.model}@champion", wait_s=120)
        body = png(Image.new("RGB", (16, 16)))
        assert post(stack.serve_url, body).status_code == 401
        assert post(stack.serve_url, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = post(stack.serve_url, body, headers={"Authorization": "Bearer s3cret-key-for-tests"})
        assert ok.status_code == 200
    finally:
        monkeypatch.delenv("IMG2IMG_SERVE_API_KEY")
        deploy(get_settings(), f"{demo_run.model}@champion", wait_s=120)


def test_two_clients_deploying_at_once_both_end_well(stack, demo_run):
    """Two `serve deploy`s at once (two demos, two teammates); the last declaration is in force.
    The same deploy twice in two threads: both return, the endpoint serving the one sized time
    limit. Then, made deterministic, a client whose declaration another replaced before its wait
    saw it served: it follows one that asks for the same up to the time limits, and fails at once
    with one line naming what serves for another model or other options, never after waiting out
    its wait_s."""
    from cluster.services import poll_until
    from cluster.settings import get_settings
    from serving.deploy import deploy, status, wait_for_model
    from serving.options import DEFAULTS, ReplicaOptions
    from tests.integration.conftest import endpoint_restored

    settings = get_settings()
    model, ref = demo_run.model, f"{demo_run.model}@champion"
    champion = registry.alias_version(stack, model, "champion")
    other = _new_version(stack, model, {})

    with endpoint_restored(settings):
        deploy(settings, ref, ReplicaOptions(request_timeout_s=200), wait_s=240)  # a config neither client asks for
        before = status(settings)["config_id"]
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(deploy, settings, ref, wait_s=240)
            assert poll_until(lambda: status(settings)["config_id"] != before, 60, interval_s=0.05)
            second = deploy(settings, ref, wait_s=240)
            first = first.result()
        assert first["version"] == second["version"] == champion
        st = status(settings)
        assert st["status"] == "RUNNING" and st["version"] == champion
        assert st["request_timeout_s"] == second["request_timeout_s"] != 200  # sized from the replica's speed
        assert httpx.get(stack.serve_url + "/model", timeout=30).json()["config_id"] == st["config_id"]

        for version, options, says in [
                (champion, ReplicaOptions(request_timeout_s=200), None),
                (other, DEFAULTS, f"another client deployed {model} v{champion} while {model} v{other} started; "
                                  "it serves that model now"),
                (champion, ReplicaOptions(tile=256), f"another client deployed {model} v{champion} with other "
                                                     "options while this change started")]:
            deploy(settings, f"{model}/{version}", options, wait_s=0)  # client 1 declares,
            declared = status(settings)["deployment"]
            deploy(settings, ref, wait_s=240)  # client 2 declares the defaults and is served,
            t0 = time.monotonic()  # then client 1's wait looks
            if says is None:
                assert wait_for_model(settings, model, version, 240, declared) is True  # followed client 2's
            else:
                with pytest.raises(Img2ImgError) as error:
                    wait_for_model(settings, model, version, 240, declared)
                assert str(error.value).startswith(says), error.value
            assert time.monotonic() - t0 < 120  # at once: its wait_s was 240
            assert status(settings)["version"] == champion
        assert post(stack.serve_url, png(Image.new("RGB", (16, 16)))).status_code == 200


def test_promote_rollback_refusal_and_reload(stack, cli, demo_run):
    model = demo_run.model
    champion = registry.alias_version(stack, model, "champion")
    # The gate compares versions on the model's evaluation set (here the demo dataset's val split).
    key = f"eval.{demo_run.dataset}.psnr"
    best = float(MlflowClient(stack.mlflow_uri).get_model_version(model, champion).tags[key])
    worse = _new_version(stack, model, {key: f"{best - 1:.4f}"})
    with pytest.raises(Img2ImgError, match=r"worse than champion .*pass --force"):
        registry.promote(stack, model, worse)
    r = cli("models", "promote", model, worse)
    assert r.exit_code == 1 and f"{best - 1:.3f}" in r.output and f"{best:.3f}" in r.output
    r = cli("models", "promote", model, worse, "--force")
    assert r.exit_code == 0
    assert registry.alias_version(stack, model, "champion") == worse
    assert registry.alias_version(stack, model, "previous") == champion
    # The running endpoint swaps to the new champion without being redeployed from scratch.
    r = cli("serve", "reload", "--model", f"{model}@champion")
    assert r.exit_code == 0, r.output
    assert httpx.get(stack.serve_url + "/model", timeout=30).json()["version"] == worse
    r = cli("models", "rollback", model)
    assert r.exit_code == 0
    assert registry.alias_version(stack, model, "champion") == champion
    assert registry.alias_version(stack, model, "previous") is None  # nothing further back
    r = cli("models", "rollback", model)
    assert r.exit_code == 1 and "no former champion" in r.output
    r = cli("models", "promote", model, "--best")
    assert r.exit_code == 0 and registry.alias_version(stack, model, "champion") == champion
    cli("serve", "reload", "--model", f"{model}@champion")
    assert httpx.get(stack.serve_url + "/model", timeout=30).json()["version"] == champion
    listing = cli("models", "ls", model).output
    assert "champion" in listing


def test_enhance_cli_writes_outputs_and_reports_failures(stack, cli, demo_run, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (33, 21), "green").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    r = cli("enhance", good, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out" / "good.enhanced.png").size == (33, 21)
    r = cli("enhance", good, bad, "-o", tmp_path / "out2")
    assert r.exit_code == 1 and "1 of 2 image(s) failed" in r.output and "415" in r.output
    r = cli("enhance", good, "--local", "--model", f"{demo_run.model}@champion", "-o", tmp_path / "local")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "local" / "good.enhanced.png").exists()
    assert not list((tmp_path / "out").glob("*.part"))


def test_unknown_model_is_refused_before_deploying(stack, cli):
    r = cli("serve", "deploy", "--model", "no-such-model@champion")
    assert r.exit_code == 1 and "no registered model 'no-such-model'; list them with: img2img models ls" in r.output


def test_a_replica_no_node_can_place_is_refused_and_the_endpoint_keeps_serving(stack, cli, endpoint, demo_run):
    """More CPUs per replica than the cluster has: Serve would replace the running app with one
    whose replica waits forever for CPUs (seen: the command hung, requests hung)."""
    r = cli("serve", "deploy", "--model", f"{demo_run.model}@champion", "--num-cpus", "100")
    assert r.exit_code == 1 and re.search(r"--num-cpus 100 is more than this Ray cluster has \(\d+ CPUs\)", r.output)
    assert httpx.get(endpoint + "/model", timeout=30).json()["name"] == demo_run.model


def assert_server_timing(reply) -> None:
    """The replica says where its time went: decode, model and encode, in milliseconds."""
    stages = dict(part.strip().split(";dur=") for part in reply.headers["server-timing"].split(","))
    assert list(stages) == ["decode", "model", "encode"]
    assert all(float(ms) >= 0 for ms in stages.values()) and float(stages["model"]) > 0


def test_export_logged_to_registry_then_served_with_onnx_runtime(stack, cli, demo_run, tmp_path):
    """`models export` writes a parity-checked ONNX file and logs it to the version; `serve deploy
    --runtime onnx` then serves from that file, and its images match the torch runtime's."""
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from translator.runtime import DISPLACE_BF16

    model = f"{demo_run.model}@champion"
    rng = np.random.default_rng(5)
    body = png(Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).filter(ImageFilter.BLUR))
    # auto on a CPU: ONNX Runtime and torch timed on the model at 256 px and one 512 px tile, each
    # size class on the faster. Each replica (autoscaling may run two) measures on its own, so the
    # GET /model of one is judged by its own timings and one reply by itself.
    info = httpx.get(stack.serve_url + "/model", timeout=30).json()
    choice = info["runtime_choice"]
    # the fastest wins, except that bf16 (a candidate only where it stays within one 8-bit level)
    # keeps a size unless another runtime is DISPLACE_BF16 x faster; GET /model rounds to 0.1 ms,
    # so a time within that of the margin may go either way
    def allowed(times: dict[str, float]) -> set[str]:
        fastest = min(times, key=times.get)
        bf16 = times.get("torch bf16")
        if bf16 is None or fastest == "torch bf16":
            return {fastest}
        edge = times[fastest] * DISPLACE_BF16 - bf16
        return {"torch bf16"} if edge > 0.15 else {fastest} if edge < -0.15 else {fastest, "torch bf16"}

    assert {"onnx fp32", "torch fp32"} <= set(choice["256x256"])
    assert f"{info['runtime']} {info['precision']}" in allowed(choice["512x512"]), choice
    small = info["small_images"]
    small_choice = f"{small['runtime']} {small['precision']}" if small else f"{info['runtime']} {info['precision']}"
    assert small_choice in allowed(choice["256x256"]), choice
    auto_reply = post(stack.serve_url, body)
    assert f"{auto_reply.headers['x-model-runtime']} {auto_reply.headers['x-model-precision']}" in choice["256x256"]
    r = cli("serve", "deploy", "--model", model, "--runtime", "torch", "--max-batch-size", "4")
    assert r.exit_code == 0, r.output
    torch_reply = post(stack.serve_url, body)  # through @serve.batch
    assert torch_reply.headers["x-model-runtime"] == "torch"
    assert_server_timing(torch_reply)
    r = cli("models", "export", model, "--format", "onnx", "-o", tmp_path / "g.onnx")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.onnx").stat().st_size > 10_000 and "Max abs difference from PyTorch" in r.output
    tags = MlflowClient(stack.mlflow_uri).get_model_version(demo_run.model, demo_run.version).tags
    assert tags["export_onnx"] == "export/g.onnx" and float(tags["export_onnx_max_abs_diff"]) <= 1e-3
    r = cli("models", "export", "no-such-model@champion", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "no registered model 'no-such-model'" in r.output
    assert not (tmp_path / "x.onnx").exists()
    try:
        r = cli("serve", "deploy", "--model", model, "--runtime", "onnx", "--num-cpus", "1")
        assert r.exit_code == 0, r.output
        info = httpx.get(stack.serve_url + "/model", timeout=30).json()
        assert info["runtime"] == "onnx" and info["threads"] == 1 and info["reserved_cpus"] == 1
        assert info["precision_check"]["exported_here"] is False  # the registry's file, not a new export
        reply = post(stack.serve_url, body)
        assert reply.status_code == 200
        assert reply.headers["x-model-runtime"] == "onnx" and reply.headers["x-model-threads"] == "1"
        assert_server_timing(reply)  # batching off: the one-thread path
        a = np.asarray(Image.open(io.BytesIO(reply.content)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(torch_reply.content)), dtype=int)
        # torch may run bf16 (within one 8-bit level of fp32); ONNX Runtime runs fp32.
        assert a.shape == b.shape == (70, 90, 3) and np.abs(a - b).max() <= 2
    finally:
        deploy(get_settings(), model, wait_s=300)
    r = cli("enhance", tmp_path / "g.onnx", "--local", "--model", model, "--runtime", "onnx", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "no image to enhance" in r.output and "g.onnx (not an image file" in r.output
    (tmp_path / "in.png").write_bytes(body)
    r = cli("enhance", tmp_path / "in.png", "--local", "--model", model, "--runtime", "onnx", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    local = np.asarray(Image.open(tmp_path / "o" / "in.enhanced.png"), dtype=int)
    assert np.abs(local - a).max() <= 1
    r = cli("enhance", tmp_path / "in.png", "--local", "--model", model, "--runtime", "tensorrt")
    assert r.exit_code == 1 and "--runtime must be auto or torch or onnx" in r.output
