"""Runtimes for a loaded generator: torch (memory format, precision chosen by measurement) and
ONNX Runtime give the same images; threads follow the reserved CPUs; bad options are refused."""

import time

import pytest
import torch

from cluster.errors import Img2ImgError
from tests.unit.test_export import trained_generator
from translator import export, precision, runtime


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Runtimes set the process's intra-op threads; give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def nafnet():
    v = trained_generator("nafnet")
    return v.generator, v.multiple


def test_threads_follow_reserved_cpus():
    assert runtime.threads_for(0.5) == 1  # a fractional CPU still gets one thread
    assert runtime.threads_for(1) == 1 and runtime.threads_for(2.7) == 2
    assert runtime.threads_for(None) >= 1


def test_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert precision.cpu_has_native_bf16() is False
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.cpu_has_native_bf16() == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_bf16_is_chosen_only_when_faster_and_within_one_8bit_level():
    x = torch.zeros(1, 3, 16, 16)
    fast_exact = lambda t: t
    slow = lambda t: (torch.ones(20_000, 200) @ torch.ones(200, 200), t)[1]
    off_by_two_levels = lambda t: t + 2 * runtime.ONE_8BIT_LEVEL
    assert runtime.choose_bf16(slow, fast_exact, x)[0] is True
    assert runtime.choose_bf16(fast_exact, slow, x)[0] is False  # bf16 slower: stay fp32
    use, check = runtime.choose_bf16(slow, off_by_two_levels, x)
    assert use is False and check["bf16_max_abs_diff"] > runtime.ONE_8BIT_LEVEL


@pytest.mark.parametrize("kw", [dict(runtime="torch", memory_format="contiguous", precision="fp32"),
                                dict(runtime="torch", memory_format="channels_last", precision="fp32"),
                                dict(runtime="torch", memory_format="channels_last", precision="auto"),
                                dict(runtime="onnx")])
def test_every_runtime_matches_plain_pytorch(nafnet, kw):
    generator, multiple = nafnet
    x = export._sample(2, 48, 64, 3, seed=3)
    with torch.inference_mode():
        want = generator.float().to(memory_format=torch.contiguous_format)(x)
    rt = runtime.build(generator, multiple, threads=1, **kw)
    assert rt.threads == 1 and rt.info()["runtime"] == kw["runtime"]
    got = rt.run(x)
    assert got.dtype == torch.float32 and got.shape == x.shape and got.is_contiguous()
    limit = runtime.ONE_8BIT_LEVEL if rt.precision == "bf16" else 1e-4
    assert (got - want).abs().max() <= limit
    assert (rt.run(x, precise=True) - want).abs().max() <= 1e-4  # 16-bit images: always fp32


def test_onnx_runtime_threads_sleep_between_ops(nafnet):
    """ONNX Runtime's pool spins between ops by default; in a replica on 2 cores that starved
    Ray Serve's proxy (256 px p50 151 vs 86 ms), so serving sessions wait passively."""
    rt = runtime.build(*nafnet, "onnx", threads=2)
    assert rt.threads == 2 and rt.info()["precision_check"]["spin_wait"] is False
    assert export.spins(export.onnx_session(export_bytes(*nafnet), 2, spin=True))  # ONNX Runtime's default


def export_bytes(generator, multiple) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return export.export(generator, "onnx", Path(d) / "m.onnx", multiple).path.read_bytes()


def test_auto_runtime_is_onnx_on_cpu(nafnet):
    assert runtime.build(*nafnet, "auto", threads=1).name == "onnx"


def test_the_fastest_runtime_is_chosen_per_size():
    """auto on a CPU times every candidate on the loaded model at 256 px and on one 512 px tile,
    and each size class gets the faster one, whichever it is."""
    def sleeper(ms_at):  # a runtime whose speed depends on the image size as given
        def run(x):
            time.sleep(ms_at[x.shape[-1]] / 1000)
            return x
        return run

    small_fast = runtime.Runtime("torch", 1, "cpu", precision="bf16", run_fast=sleeper({256: 2, 512: 60}))
    tile_fast = runtime.Runtime("onnx", 1, "cpu", run_fast=sleeper({256: 25, 512: 15}))
    chosen, report = runtime.fastest_per_size([tile_fast, small_fast], reps=2)
    assert chosen == {256: small_fast, 512: tile_fast}
    assert set(report) == {"256x256", "512x512"} and set(report["256x256"]) == {"torch bf16", "onnx fp32"}
    assert report["256x256"]["torch bf16"] < report["256x256"]["onnx fp32"]
    assert report["512x512"]["onnx fp32"] < report["512x512"]["torch bf16"]
    with pytest.raises(ValueError):
        runtime.fastest_per_size([])


def test_bf16_keeps_a_size_unless_another_runtime_is_ten_percent_faster():
    """Timing at start is noisy on a busy machine: a native, precise-enough bf16 runtime is not
    displaced by a near-tie, only by a runtime clearly faster."""
    def sleeper(ms):
        return lambda x: time.sleep(ms / 1000) or x

    def choice(*candidates):
        return runtime.fastest_per_size(list(candidates), (64,), reps=3)[0][64]

    bf16 = runtime.Runtime("torch", 1, "cpu", precision="bf16", run_fast=sleeper(20))
    near = [runtime.Runtime("torch", 1, "cpu", precision="fp32", run_fast=sleeper(19)),
            runtime.Runtime("onnx", 1, "cpu", run_fast=sleeper(19))]
    clearly = runtime.Runtime("onnx", 1, "cpu", run_fast=sleeper(10))
    slower = runtime.Runtime("torch", 1, "cpu", precision="fp32", run_fast=sleeper(30))
    assert choice(*near, bf16) is bf16 and choice(slower, bf16) is bf16
    assert choice(near[0], clearly, bf16) is clearly
    assert choice(near[0], near[1]) in near and choice(near[0], clearly) is clearly  # no bf16: the fastest


def test_cpu_candidates_hold_bf16_only_where_native_and_within_one_8bit_level(nafnet):
    generator, multiple = nafnet
    onnx = runtime.build(generator, multiple, "onnx", threads=1)
    candidates, notes = runtime.cpu_candidates(generator, 1, onnx)
    assert [(c.name, c.precision) for c in candidates[:2]] == [("onnx", "fp32"), ("torch", "fp32")]
    assert candidates[1].memory_format == "channels_last"
    if not runtime.cpu_has_native_bf16():
        assert len(candidates) == 2 and "no native bf16" in notes["bf16"]
    else:
        within = notes["bf16_max_abs_diff"] <= runtime.ONE_8BIT_LEVEL
        assert (len(candidates) == 3) is within
        if within:
            assert candidates[2].precision == "bf16"


def test_auto_sends_small_images_to_one_runtime_and_large_ones_to_another(nafnet):
    """A model loaded with runtime auto can carry two runtimes (the faster at 256 px and the
    faster per tile) and picks per image by its pixel count."""
    from registry.loading import SMALL_IMAGE_PIXELS, LoadedModel

    generator, multiple = nafnet
    large = runtime.build(generator, multiple, "onnx", threads=1)
    small = runtime.build(generator, multiple, "torch", threads=1, precision="bf16")
    m = LoadedModel(generator, "m", "1", "nafnet", multiple, runtime=large, small_runtime=small,
                    small_pixels=SMALL_IMAGE_PIXELS)
    assert m.net("AtoB", 512 * 512) is small and m.net("AtoB", 512 * 513) is large and m.net("AtoB") is large
    assert m.info()["runtime"] == "onnx" and m.info()["small_images"]["runtime"] == "torch"
    assert m.info()["small_images"]["max_pixels"] == 512 * 512
    x = export._sample(1, 40, 56, 3, seed=4)
    with torch.inference_mode():
        want = generator.float().to(memory_format=torch.contiguous_format)(x)
    assert (m.enhance(x) - want).abs().max() <= runtime.ONE_8BIT_LEVEL  # ran on the small (bf16) runtime
    assert LoadedModel(generator, "m", "1", "nafnet", multiple, runtime=large).info()["small_images"] is None


def test_unknown_runtime_options_are_refused(nafnet):
    generator, multiple = nafnet
    with pytest.raises(ValueError, match="runtime must be auto, torch or onnx"):
        runtime.build(generator, multiple, "tensorrt")
    with pytest.raises(ValueError, match="memory format"):
        runtime.build(generator, multiple, "torch", memory_format="nhwc")


@pytest.mark.parametrize("kw, message", [
    (dict(runtime="tensorrt"), "--runtime must be auto or torch or onnx"),
    (dict(memory_format="nhwc"), "--memory-format must be channels_last or contiguous"),
    (dict(precision="fp8"), "--precision must be auto or fp32 or bf16"),
    (dict(threads=0), "--threads must be >= 1"),
    # each of these made Serve refuse the config after it replaced the running one: no replica left
    (dict(target_ongoing_requests=0), "--target-ongoing-requests must be > 0, got 0"),
    (dict(request_timeout=0), "--request-timeout must be > 0 seconds, got 0"),
    (dict(request_timeout=-5), "--request-timeout must be > 0 seconds"),
    (dict(request_timeout=float("nan")), "--request-timeout must be a finite number, got nan"),
    (dict(num_cpus=float("inf")), "--num-cpus must be a finite number, got inf"),
    (dict(batch_wait_ms=float("nan")), "--batch-wait-ms must be a finite number"),
])
def test_deploy_refuses_bad_runtime_options_before_touching_the_cluster(kw, message):
    from cluster.settings import get_settings
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    with pytest.raises(Img2ImgError, match=message):  # `kw`: the options as `serve deploy` takes them
        deploy(get_settings(), "photos@champion", ReplicaOptions.from_flags(kw), Scaling.from_flags(kw))


def test_a_background_replica_runs_every_thread_under_sched_idle():
    """serving.app.lower_priority (a shadow's challenger, in its own process): the threads that
    exist (the event loop's, Ray's) and those started afterwards (torch's intra-op pool) all run
    under SCHED_IDLE; other processes keep their policy."""
    import json
    import os
    import subprocess
    import sys

    code = """
import json, os, threading
from serving.app import lower_priority
policy = lambda: os.sched_getscheduler(threading.get_native_id())
seen, go = {}, threading.Event()
def early():
    go.wait()
    seen["started_before"] = policy()
t = threading.Thread(target=early)
t.start()
lower_priority()
go.set()
t.join()
later = threading.Thread(target=lambda: seen.__setitem__("started_after", policy()))
later.start()
later.join()
seen["main"] = policy()
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"started_before": os.SCHED_IDLE, "started_after": os.SCHED_IDLE, "main": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
