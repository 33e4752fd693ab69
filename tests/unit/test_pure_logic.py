"""The pure logic of jobs/ and serving/, without services: how ingest splits sources, how
training crops pairs, how the endpoint batches tiles, when a promotion is refused, and the small
shared helpers (atomic writes, polling, the job environment)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.errors import Img2ImgError
from jobs.data.ingest import IngestOptions, plan_rows, plan_shards
from jobs.data.sources import SourceFile


def _files(keys):
    return [SourceFile(k, f"/src/{k}") for k in keys]


def _splits(rows_by_split):
    """{source key: {splits its rows went to}} (row keys are SOURCE#crop#copy)."""
    out: dict[str, set[str]] = {}
    for (split, _), rows in rows_by_split.items():
        for row in rows:
            out.setdefault(row.key.split("#")[0], set()).add(split)
    return out


# ---- ingest: split planning ------------------------------------------------------------------
def test_split_keeps_every_crop_and_copy_of_a_source_on_one_side():
    files = _files([f"photo{i:02d}.png" for i in range(40)])
    opts = IngestOptions(name="d", copies=3, crops=4, val_fraction=0.25, seed=7)
    rows = plan_rows(files, opts)
    where = _splits(rows)
    assert all(len(s) == 1 for s in where.values())  # no source leaks into both splits
    val = {k for k, s in where.items() if s == {"val"}}
    assert len(val) == 10  # 25% of the 40 sources, whole
    assert len(rows[("val", None)]) == 10 * 4 * 3 and len(rows[("train", None)]) == 30 * 4 * 3


def test_split_is_deterministic_per_seed_and_independent_of_listing_order():
    keys = [f"photo{i:02d}.png" for i in range(40)]
    opts = IngestOptions(name="d", val_fraction=0.2, seed=3)
    a = _splits(plan_rows(_files(keys), opts))
    b = _splits(plan_rows(_files(list(reversed(keys))), opts))
    assert a == b
    other = _splits(plan_rows(_files(keys), IngestOptions(name="d", val_fraction=0.2, seed=4)))
    assert {k for k, s in a.items() if s == {"val"}} != {k for k, s in other.items() if s == {"val"}}
    shards = [(p.split, p.path, [r.key for r in p.rows]) for p in plan_shards(_files(keys), opts)]
    assert shards == [(p.split, p.path, [r.key for r in p.rows]) for p in plan_shards(_files(keys), opts)]


def test_aligned_folders_split_by_name_and_test_folders_are_validation():
    names = [f"{i}.png" for i in range(10)]
    files = _files([f"A/{n}" for n in names] + [f"B/{n}" for n in names])
    rows = plan_rows(files, IngestOptions(name="d", kind="aligned", val_fraction=0.3, seed=1))
    pairs = [r for split_rows in rows.values() for r in split_rows]
    assert all(len(r.files) == 2 and r.files[0].key[2:] == r.files[1].key[2:] for r in pairs)  # A/x with B/x
    assert len(rows[("val", None)]) == 3 and len(rows[("train", None)]) == 7
    held = _files([f"trainA/{n}" for n in names[:6]] + [f"trainB/{n}" for n in names[:6]]
                  + [f"testA/{n}" for n in names[6:]] + [f"testB/{n}" for n in names[6:]])
    rows = plan_rows(held, IngestOptions(name="d", kind="aligned", val_fraction=0.5, seed=1))
    assert sorted(r.key.split("#")[0] for r in rows[("val", None)]) == sorted(f"testA/{n}" for n in names[6:])


def test_unaligned_domains_split_each_domain_alone():
    files = _files([f"trainA/a{i}.png" for i in range(10)] + [f"trainB/b{i}.png" for i in range(5)])
    rows = plan_rows(files, IngestOptions(name="d", kind="unaligned", val_fraction=0.2, seed=0))
    assert {k: len(v) for k, v in rows.items()} == {("train", "a"): 8, ("val", "a"): 2, ("train", "b"): 4,
                                                   ("val", "b"): 1}
    assert all(len(s) == 1 for s in _splits(rows).values())


# ---- training data: paired crops -------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("cached", [False, True], ids=["png-each-read", "decoded-once"])
def test_paired_crops_cut_and_flip_input_and_target_alike(cached):
    """The same crops and flips whether a read decodes the stored PNGs or crops the pixels a
    cached stream decoded once (`DecodeRows`)."""
    from jobs.data.decode import DecodeBatch, DecodeRows

    h, w, s = 24, 40, 16
    # red counts rows, green columns: every pixel unique, so a crop's position and a flip show
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = np.stack([rows * 10, cols * 6, (rows + cols) % 7 * 30], axis=-1).astype(np.uint8)
    target = 255 - src  # maps to exactly -input in [-1, 1]
    n = 64
    batch = {"key": np.array([f"k{i}" for i in range(n)]), "input": np.array([_png(src)] * n, dtype=object),
             "target": np.array([_png(target)] * n, dtype=object)}
    if cached:
        batch = DecodeRows(["input", "target"])(batch)
        assert batch["input"][0].dtype == np.uint8 and batch["input"][0].shape == (h, w, 3)
    out = DecodeBatch(["input", "target"], s, augment=True)(batch)
    assert out["input"].shape == out["target"].shape == (n, 3, s, s) and out["input"].dtype == np.float32
    np.testing.assert_allclose(out["target"], -out["input"], atol=1e-6)  # same crop, same flip
    full = src.astype(np.float32) / 255 * 2 - 1
    boxes, flips = set(), set()
    for x in out["input"].transpose(0, 2, 3, 1):
        found = [(t, l, f) for t in range(h - s + 1) for l in range(w - s + 1) for f in (False, True)
                 if np.allclose((full[t:t + s, l:l + s, :][:, ::-1] if f else full[t:t + s, l:l + s, :]), x)]
        assert len(found) == 1  # a real window of the source, flipped or not
        boxes.add(found[0][:2])
        flips.add(found[0][2])
    assert flips == {False, True} and len(boxes) > 8  # random crops and flips, not one fixed cut
    val = DecodeBatch(["input", "target"], s, augment=False)(batch)
    np.testing.assert_allclose(val["input"][0].transpose(1, 2, 0), full[4:20, 12:28], atol=1e-6)  # centre crop


def test_a_cache_is_sized_from_the_manifest():
    from jobs.data.stream import decoded_bytes
    from registry.manifest import Manifest, Shard

    shards = {"train": [Shard("train/a.parquet", 10, "x", 1), Shard("train/b.parquet", 6, "y", 1)],
              "val": [Shard("val/a.parquet", 3, "z", 1)]}
    m = Manifest("d", "paired", "synth", "", "", 64, None, 0, splits=shards)
    assert decoded_bytes(m, "train", ["input", "target"]) == 16 * 2 * 64 * 64 * 3
    assert decoded_bytes(m, "val", ["target"]) == 3 * 64 * 64 * 3
    m.image_size = None  # --size 0: sizes vary, nothing to size a cache by
    assert decoded_bytes(m, "train", ["input", "target"]) is None


@pytest.mark.parametrize("crop, scale, rows", [(32, 1, 64), (64, 1, 64), (96, 1, 28), (128, 1, 16), (512, 1, 16),
                                             (None, 1, 16), (32, 4, 16), (16, 2, 64)])
def test_small_crops_are_made_in_larger_tasks(crop, scale, rows):
    """Each Ray Data task has a fixed CPU cost: 64 px crops go 64 to a task, large ones stay at 16."""
    from jobs.data.stream import task_rows

    assert task_rows(crop, scale) == rows


def test_d4_augmentation_turns_input_and_target_alike_through_all_eight_orientations():
    from jobs.data.decode import DecodeBatch

    s = 12
    rows, cols = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    src = np.stack([rows * 20, cols * 20, (rows * 3 + cols) % 11 * 20], axis=-1).astype(np.uint8)
    n = 96
    batch = {"key": np.array([f"k{i}" for i in range(n)]), "input": np.array([_png(src)] * n, dtype=object),
             "target": np.array([_png(255 - src)] * n, dtype=object)}
    out = DecodeBatch(["input", "target"], s, augment=True, rotate=True)(batch)
    np.testing.assert_allclose(out["target"], -out["input"], atol=1e-6)  # the pair turned together
    full = src.astype(np.float32) / 255 * 2 - 1
    orientations = [np.rot90(f, k, axes=(0, 1)) for f in (full, full[:, ::-1]) for k in range(4)]
    seen = set()
    for x in out["input"].transpose(0, 2, 3, 1):
        found = [i for i, o in enumerate(orientations) if np.allclose(o, x)]
        assert len(found) == 1  # one of the square's 8 orientations, nothing else
        seen.add(found[0])
    assert seen == set(range(8))
    plain = DecodeBatch(["input", "target"], s, augment=True)(batch)  # the default: flips only
    assert all(np.allclose(x, full) or np.allclose(x, full[:, ::-1]) for x in plain["input"].transpose(0, 2, 3, 1))


# ---- serving: tiles of concurrent requests batched ---------------------------------------------
class _Runtime:
    """Stands in for a model runtime: records each forward pass, output = 2 * input."""

    def __init__(self):
        self.passes: list[tuple[int, bool]] = []

    def run(self, x: torch.Tensor, precise: bool) -> torch.Tensor:
        self.passes.append((x.shape[0], precise))
        return x * 2


def test_tile_batches_group_by_runtime_shape_and_precision_and_answer_each_request():
    from translator.compute import group_tiles, run_grouped

    fast, other = _Runtime(), _Runtime()
    tiles = [torch.full((1, 3, 8, 8), float(i)) for i in range(7)]
    items = [(None, fast, tiles[0], False), (None, fast, tiles[1], False), (None, fast, tiles[2], True),
             (None, other, tiles[3], False), (None, fast, torch.full((1, 3, 8, 16), 4.0), False),
             (None, fast, tiles[5], False), (None, other, tiles[6], False)]
    groups = group_tiles(items)
    assert sorted(i for idx in groups.values() for i in idx) == list(range(len(items)))  # each exactly once
    assert sorted(groups.values()) == [[0, 1, 5], [2], [3, 6], [4]]
    outs = run_grouped(items)
    for (_, _, tile, _), out in zip(items, outs):
        assert torch.equal(out, tile * 2)  # every request gets its own tile's output back
    assert sorted(fast.passes) == [(1, False), (1, True), (3, False)] and other.passes == [(2, False)]


def test_one_request_runs_its_tiles_a_few_at_a_time_and_stops_past_its_deadline():
    import time

    from translator.compute import run_grouped

    net = _Runtime()
    items = [(None, net, torch.full((1, 3, 8, 8), float(i)), False) for i in range(10)]
    outs = run_grouped(items, per_pass=4)
    assert [p for p, _ in net.passes] == [4, 4, 2]  # never every tile of a large image in one pass
    assert all(torch.equal(o, t * 2) for (_, _, t, _), o in zip(items, outs))
    net.passes.clear()
    with pytest.raises(TimeoutError):  # a request already answered 504 computes no further
        run_grouped(items, per_pass=4, deadline=time.monotonic() - 1)
    assert net.passes == []


@pytest.mark.parametrize("device, largest_pass", [("cpu", 1), ("cuda", 4)])
def test_a_request_alone_runs_one_tile_per_pass_on_a_cpu(device, largest_pass):
    """On a CPU one tile per forward pass was the fastest (1024 px photo, 512 px tiles: 1.17 s
    one by one, 2.28 s four at a time); GPUs batch up to 4 of a request's tiles."""
    import io

    from PIL import Image

    from translator.compute import enhance_alone
    from translator.descriptor import GeneratorDescriptor

    net = _Runtime()
    net.device = device

    class Model:
        multiple = 1
        descriptor = GeneratorDescriptor()  # same size: scale 1

        def net(self, direction, pixels=None):
            return net

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, "PNG")
    data, media, decoded, stages, used = enhance_alone(buf.getvalue(), 10**6, Model(), "AtoB", "png", 16, 4)
    assert used is net and media == "image/png" and set(stages) == {"decode", "model", "encode"}
    assert len(net.passes) > 4 and max(p for p, _ in net.passes) == largest_pass


def test_output_formats_refuse_sizes_they_cannot_hold_before_the_model_runs():
    from translator import codec
    from translator.images import Picture

    class Decoded:  # only the shape matters to the check (8-bit samples: any format holds them)
        def __init__(self, h, w, scale=1):
            self.tensor = torch.zeros(1, 3, h, w)
            self.picture = Picture(np.zeros((1, 1, 3), np.float32))
            self.scale = scale  # the model's: the output is scale times each side

    for fmt, side in (("webp", 16383), ("WEBP", 16383), ("jpeg", 65535), ("jpg", 65535)):
        codec.check_output(fmt, Decoded(8, side))
        with pytest.raises(codec.RequestError, match=f"at most {side} px") as e:
            codec.check_output(fmt, Decoded(side + 1, 8))
        assert e.value.status == 400
    with pytest.raises(codec.RequestError, match="at most 16383 px"):  # a 4x model's output is what must fit
        codec.check_output("webp", Decoded(8, 4096, scale=4))
    codec.check_output("png", Decoded(8, 70000))  # PNG and TIFF hold any size the pixel limit lets in
    with pytest.raises(codec.RequestError, match="unknown format 'gif'"):
        codec.check_format("gif")


def test_deploy_stops_waiting_when_the_replica_reports_this_versions_load_error():
    from serving.deploy import load_failure

    cid = "abc"
    ok = {"name": "m", "version": "2", "config_id": cid, "load_error": None}
    assert load_failure(200, ok, "m", "3", cid) is None
    kept_old = {**ok, "load_error": "could not load m v3: no such artifact"}
    assert load_failure(200, kept_old, "m", "3", cid) == "could not load m v3: no such artifact"
    assert load_failure(200, kept_old, "m", "3", "other-config") is None  # not yet our config
    first = {"error": "model not loaded: could not load m v3: no such artifact"}
    assert load_failure(503, first, "m", "3", cid) == "no such artifact"
    assert load_failure(503, first, "m", "4", cid) is None  # an older failure, not this version's
    assert load_failure(503, {"error": "model not loaded: no model configured yet"}, "m", "3", cid) is None


def _declared(**uc) -> dict:
    """A deployment as `serve deploy` PUTs it (model m v1, default options, plus `uc`)."""
    return {"name": "Enhancer", "graceful_shutdown_timeout_s": 80.0,
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
            "ray_actor_options": {"num_cpus": 1.0, "resources": {"img2img_admission": 1.0}},
            "user_config": {"model_name": "m", "model_version": "1", "tile": 512, "request_timeout_s": 60.0, **uc}}


@pytest.mark.parametrize("theirs, same", [
    (_declared(), True),
    # the time limits sizing re-writes; a version as a number; a count as a float
    ({**_declared(request_timeout_s=7.0), "graceful_shutdown_timeout_s": 67.0}, True),
    (_declared(model_version=1), True),
    ({**_declared(), "ray_actor_options": {"num_cpus": 1, "resources": {"img2img_admission": 1}}}, True),
    ({**_declared(), "max_ongoing_requests": 16}, False),
    (_declared(model_version="2"), False),
    (_declared(tile=256), False),
    (_declared(api_key_sha256="ab12"), False),
    (_declared(rollout={"id": "x", "state": "canary"}), False),
    ({**_declared(), "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}, False),
    ({**_declared(), "ray_actor_options": {"num_cpus": 1.0, "resources": {"img2img_admission": 1.0},
                                          "runtime_env": {"env_vars": {"X": "0"}}}}, False),
    ({**_declared(), "ray_actor_options": {"num_cpus": 2.0}}, False),
])
def test_a_wait_follows_another_clients_declaration_only_when_it_asks_for_the_same(theirs, same):
    """`serve deploy` follows a declaration another client made meanwhile only when it serves the
    same model with the same options, up to the time limits sizing sets; else it fails at once."""
    from serving.deploy import same_intent

    assert same_intent(_declared(), theirs) is same


@pytest.mark.parametrize("theirs, says", [
    (None, "the enhancer app was removed while m v1 started"),
    ({"user_config": None}, "the enhancer app was removed while m v1 started"),
    (_declared(model_version="3"), "another client deployed m v3 while m v1 started; it serves that model now"),
    (_declared(tile=256), "another client deployed m v1 with other options while this change started; theirs"),
])
def test_a_superseded_change_says_what_replaced_it_in_one_line(theirs, says):
    from serving.deploy import superseded

    msg = str(superseded("m", "1", theirs))
    assert msg.startswith(says) and "\n" not in msg


# ---- registry: the promotion rule ------------------------------------------------------------
def test_promotion_rule():
    from registry.models import promotion_objections

    score = {"1": {"psnr": 30.0, "gain_db": 1.0}, "2": {"psnr": 29.5, "gain_db": 0.5},
             "3": {"psnr": 31.0, "gain_db": -0.2}, "4": {"psnr": 30.0, "gain_db": 1.0}}
    assert promotion_objections("1", None, score, "psnr", "blur/val") == []  # first champion
    assert promotion_objections("4", "1", score, "psnr", "blur/val") == []  # a tie is no objection
    assert promotion_objections("1", "1", score, "psnr", "blur/val") == []
    [worse] = promotion_objections("2", "1", score, "psnr", "blur/val")
    assert worse == "v2 has psnr 29.500 on blur/val, worse than champion v1 (30.000)"
    [harm] = promotion_objections("3", "1", score, "psnr", "blur/val")  # better PSNR, but harms its input
    assert "worse than its input" in harm and "-0.20 dB" in harm
    assert len(promotion_objections("3", "1", score, "gain_db", "blur/val")) == 2
    # a diverged run scores nan: it is neither worse (nan < x is False) nor rankable, so it is refused
    diverged = {**score, "7": {"psnr": float("nan"), "gain_db": float("nan")}}
    [nan] = promotion_objections("7", "1", diverged, "psnr", "blur/val")
    assert nan == "v7 has psnr nan on blur/val: not a number to rank (its training diverged)"
    assert promotion_objections("7", None, diverged, "psnr", "blur/val") == [nan]  # not even as the first
    cycle = {"5": {"cycle_psnr": 20.0}, "6": {"cycle_psnr": 21.0}}  # unpaired: cycle metrics, no gain
    assert promotion_objections("6", "5", cycle, "psnr", "h2z/val") == []
    assert "worse than champion v6" in promotion_objections("5", "6", cycle, "psnr", "h2z/val")[0]


# ---- shared helpers --------------------------------------------------------------------------
def test_write_atomic_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    from cluster.files import write_atomic

    path = tmp_path / "out.png"
    write_atomic(path, b"old")
    with pytest.raises(ZeroDivisionError):
        write_atomic(path, lambda tmp: (tmp.write_bytes(b"half"), 1 / 0))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]  # no temp file left
    write_atomic(path, "secret", mode=0o600)
    assert path.read_text() == "secret" and (path.stat().st_mode & 0o777) == 0o600


def test_poll_until_returns_the_first_truthy_value_or_none_at_the_deadline():
    from cluster.services import poll_until

    calls = []
    assert poll_until(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 5, interval_s=0.01) == "ready"
    assert len(calls) == 3
    t0 = time.monotonic()
    assert poll_until(lambda: None, 0.2, interval_s=0.05) is None
    assert time.monotonic() - t0 < 2

    def failed():
        raise Img2ImgError("deploy failed")

    with pytest.raises(Img2ImgError, match="deploy failed"):  # a check gives up early by raising
        poll_until(failed, 5)


def test_job_environment_carries_no_secret():
    from cluster.settings import Settings

    s = Settings(s3_access_key="AK-not-logged", s3_secret_key="SK-not-logged", serve_api_key="KEY-not-logged",
                 s3_endpoint="store:9000", mlflow_uri="http://mlflow:5000", ray_address="http://ray:8265")
    env = s.job_env()
    assert env["IMG2IMG_S3_ENDPOINT"] == "store:9000" and env["IMG2IMG_MLFLOW_URI"] == "http://mlflow:5000"
    assert env["RAY_API_SERVER_ADDRESS"] == "http://ray:8265"
    assert env["IMG2IMG_DECODE_CACHE_SHARE"] == "0.2"  # the driver sizes its decode cache with it
    assert not any("not-logged" in v for v in env.values())


def test_workers_get_the_typed_job_the_driver_planned():
    import pickle

    from jobs.training.plan import Cadence, make_plan
    from jobs.training.spec import TrainSpec
    from jobs.training.worker import WorkerJob

    spec = TrainSpec(dataset="blur", run_id="r1", time_budget_s=30.0, fail_at_step=7, config={"width": 8})
    job = WorkerJob(spec=spec, plan=make_plan({"train": 40}, 2, 4, 3, None, 4), cadence=Cadence.parse("5m"),
                    variant_config=dict(spec.variant_config().__dict__), paired=True, tracking_uri="http://m",
                    resume_path="bucket/checkpoints/r0/checkpoint_000001", val_streams=("val",))
    wire = pickle.loads(pickle.dumps(job.to_loop_config()))  # what Ray Train hands each worker
    assert all(isinstance(v, (dict, bool, str, list)) for v in wire.values())  # plain data on the wire
    again = WorkerJob.from_loop_config(wire)
    assert again == job and again.spec.time_budget_s == 30.0 and again.cadence.seconds == 300


def test_serve_options_refuse_bad_values_naming_the_flag():
    from serving.options import DEFAULTS, ReplicaOptions, Scaling, config_id

    ReplicaOptions(**DEFAULTS.model_dump())
    with pytest.raises(Img2ImgError, match="--num-cpus"):
        Scaling(num_cpus=0)
    for kw, flag in (({"runtime": "tensorrt"}, "--runtime"), ({"memory_format": "nhwc"}, "--memory-format"),
                     ({"precision": "fp16"}, "--precision"),
                     ({"threads": 0}, "--threads"), ({"tile": 8}, "--tile"), ({"tile": 4097}, "--tile"),
                     ({"overlap": 300}, "--overlap"), ({"overlap": -1}, "--overlap"),
                     ({"max_pixels": 0}, "--max-megapixels"), ({"max_batch_size": 0}, "--max-batch-size"),
                     ({"batch_wait_timeout_s": -0.1}, "--batch-wait-ms"), ({"request_timeout_s": 0}, "--request-timeout")):
        with pytest.raises(Img2ImgError, match=flag):
            ReplicaOptions(**kw)
    assert "num_cpus" not in DEFAULTS.model_dump()
    assert config_id({"a": 1, "b": 2}) == config_id({"b": 2, "a": 1}) != config_id({"a": 1, "b": 3})


def test_server_timing_header_round_trips_through_the_benchmark_parser():
    from benchmarks.serve_latency import replica_seconds
    from serving.responses import server_timing

    header = server_timing({"decode": 0.0021, "model": 0.0483, "encode": 0.003})
    assert header == "decode;dur=2.1, model;dur=48.3, encode;dur=3.0"
    assert replica_seconds(header) == pytest.approx(0.0534)
    assert replica_seconds("") == 0.0


def test_training_that_would_leave_the_data_pipeline_no_cpu_is_refused_naming_serve():
    """Seen for real: Serve replicas held 2 of 4 CPUs, 2 workers took the rest, and the job sat at
    0% CPU forever (Ray Data's decode tasks had none). Now refused before submission, with the fix."""
    from cluster.errors import Img2ImgError
    from jobs.training.driver import check_resources
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset="d", workers=2, cpus_per_worker=1.0)
    # 1.5 CPUs left for the data (1) and the driver (0.5): fine
    check_resources(spec, {"CPU": 4.0}, "http://ray", serve_cpus=0.5)
    with pytest.raises(Img2ImgError) as e:
        check_resources(spec, {"CPU": 4.0}, "http://ray", serve_cpus=2.0)
    assert str(e.value) == (
        "the cluster at http://ray has 4 CPUs; Serve replicas hold 2 of its CPUs and --workers 2 x --cpus-per-worker 1"
        " = 2 would leave 0 for reading the data (1) and the job's driver (0.5): the job could never start; use "
        "fewer --workers or a smaller --cpus-per-worker or free the replicas' CPUs "
        "(`img2img serve deploy --num-cpus 1`, `img2img serve rm`)")
    with pytest.raises(Img2ImgError, match="would leave 0 for reading the data"):
        check_resources(TrainSpec(dataset="d", workers=4, cpus_per_worker=1.0), {"CPU": 4.0}, "http://ray")
    with pytest.raises(Img2ImgError, match="= 5 CPUs, but the cluster at http://ray has 4"):
        check_resources(TrainSpec(dataset="d", workers=5, cpus_per_worker=1.0), {"CPU": 4.0}, "http://ray")


def test_evaluation_jobs_get_the_same_capacity_check_as_training():
    """Evaluation streams rows through Ray Data read tasks into Scorer actors: it stalls alike."""
    import inspect

    from cluster.errors import Img2ImgError
    from jobs.evaluation import client as eval_submit
    from jobs.training.plan import check_capacity

    assert "admit(" in inspect.getsource(eval_submit.prepare)
    with pytest.raises(Img2ImgError, match="Serve replicas hold 3 of its CPUs and --workers 1 x --cpus-per-worker 1"):
        check_capacity(1, 1.0, False, {"CPU": 4.0}, "http://ray", serve_cpus=3.0)
    with pytest.raises(Img2ImgError, match="--gpu asks for 2 GPU worker"):
        check_capacity(2, 1.0, True, {"CPU": 8.0, "GPU": 1.0}, "http://ray")


def test_a_version_scored_now_is_compared_on_the_numbers_its_tags_will_keep():
    """The gate mixes versions read back from their tags (4 decimals) with ones evaluated just
    now: both must be the same numbers, or a printed PSNR can differ from the registry's by 0.01."""
    from registry.tracking import as_stored, eval_tags

    metrics = {"psnr": 36.054996, "ssim": 0.91234567, "gain_db": 2.00005}
    tags = eval_tags({"dataset": "d", "metrics": metrics, "split": "val", "dataset_sha256": "s", "images": 3})
    assert as_stored(metrics) == {k: float(tags[f"eval.d.{k}"]) for k in metrics}
    assert f"{as_stored(metrics)['psnr']:.2f}" == f"{float(tags['eval.d.psnr']):.2f}"
