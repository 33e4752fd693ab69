"""Datasets on the real embedded store: ingest every kind, inspect, verify, resume, stream."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.storage import Storage
from registry.manifest import dataset_prefix, manifest_key, read_manifest

pytestmark = pytest.mark.integration


def photo(seed, size=(80, 64), mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = (np.kron(rng.random((size[1] // 8, size[0] // 8, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Real-world files: good ones in many modes, plus corrupt and truncated ones."""
    root = tmp_path_factory.mktemp("messy")
    (root / "sub").mkdir()
    photo(1).save(root / "rgb.png")
    photo(2).save(root / "photo.jpg", quality=90)
    photo(3, mode="L").save(root / "gray.png")
    photo(4, mode="RGBA").save(root / "alpha.png")
    photo(5, mode="CMYK").save(root / "sub" / "cmyk.tif")
    Image.fromarray(np.asarray(photo(6, mode="L"), dtype=np.uint16) * 257).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(7, size=(96, 64)).save(root / "rotated.jpg", exif=exif)
    photo(8).save(root / "sub" / "pic.webp")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = io.BytesIO()
    photo(9).save(good, "PNG")
    (root / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return root


def test_ingest_sample_photos_show_verify_ls(stack, cli, tmp_path):
    r = cli("data", "ingest", "--sample", "--name", "sample", "--size", "64", "--crops", "2", "--shard-rows", "8")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "sample")
    assert m.kind == "paired" and m.degradation == "gaussian:1.5" and m.source == "sample:scikit-image"
    assert m.counts["train"] + m.counts["val"] == 15 * 2 and m.counts["val"] >= 2
    assert all(s.rows <= 8 for s in m.splits["train"])
    r = cli("data", "show", "sample", "--preview", tmp_path / "p.png")
    assert r.exit_code == 0 and Image.open(tmp_path / "p.png").width > 64 * 2
    assert cli("data", "verify", "sample").exit_code == 0
    assert "sample" in cli("data", "ls").output


def test_ingest_handles_real_world_files_and_skips_broken_ones(stack, cli, messy_folder):
    r = cli("data", "ingest", messy_folder, "--name", "messy", "--size", "48", "--degrade",
            "mix(gaussian:2,resize:4)", "--copies", "2", "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output
    assert "Skipped 2 file(s)" in r.output and "corrupt.png" in r.output and "truncated.png" in r.output
    m = read_manifest(Storage(stack), "messy")
    assert sum(m.counts.values()) == 8 * 2  # 8 readable photos x 2 degraded copies
    assert {s["file"] for s in m.skipped} == {"corrupt.png", "truncated.png"}


def test_exif_rotation_and_16bit_are_respected(stack, messy_folder):
    import pyarrow.parquet as pq

    s = Storage(stack)
    m = read_manifest(s, "messy")
    rows = [r for split in m.splits.values() for sh in split
            for r in pq.read_table(io.BytesIO(s.get_bytes(dataset_prefix("messy") + sh.path))).to_pylist()]
    sixteen = next(r for r in rows if r["key"].startswith("sixteen.png"))
    assert sixteen["target"][24:26] == b"\x10\x00"  # a 16-bit grey source is stored 16-bit grey
    target = np.asarray(Image.open(io.BytesIO(sixteen["target"])))
    assert 20 * 257 < target.mean() < 235 * 257  # scaled from 16 bit, not clipped to white
    stored = {r["key"].split("#")[0]: r["target"][24:26] for r in rows}  # IHDR bit depth, colour type
    assert stored["gray.png"] == b"\x08\x00" and stored["alpha.png"] == b"\x08\x06"  # grey, RGBA kept
    assert all(Image.open(io.BytesIO(r["input"])).size == (48, 48) for r in rows)


def objects_of(s: Storage, name: str) -> set[str]:
    return {o.key for o in s.list(dataset_prefix(name))}


def referenced(s: Storage, name: str) -> set[str]:
    """The manifest and every shard it lists: all a complete dataset may hold."""
    m = read_manifest(s, name)
    return {manifest_key(name)} | {dataset_prefix(name) + sh.path for shards in m.splits.values() for sh in shards}


def test_existing_name_is_refused_unless_overwrite(stack, cli, messy_folder, tmp_path):
    s = Storage(stack)
    r = cli("data", "ingest", messy_folder, "--name", "messy", "--size", "48")
    assert r.exit_code == 1 and "already exists" in r.output
    old, old_objects = read_manifest(s, "messy"), objects_of(s, "messy")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for i in range(7):
        (corrupt / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    r = cli("data", "ingest", corrupt, "--name", "messy", "--size", "48", "--overwrite")
    assert r.exit_code == 1 and "no image could be used" in r.output and "left as it was" in r.output, r.output
    assert "skipped 7: " in r.output and r.output.rstrip().endswith("; and 2 more"), r.output  # 5 named, 2 counted
    assert read_manifest(s, "messy").sha256 == old.sha256 and objects_of(s, "messy") == old_objects  # untouched
    assert cli("data", "verify", "messy").exit_code == 0
    r = cli("data", "ingest", messy_folder, "--name", "messy", "--size", "48", "--overwrite")
    assert r.exit_code == 0
    assert sum(read_manifest(s, "messy").counts.values()) == 8
    assert objects_of(s, "messy") == referenced(s, "messy")  # the old shards are gone, nothing orphaned


def test_aligned_side_by_side_and_folders_matched_by_name(stack, cli, tmp_path):
    sbs = tmp_path / "sbs"
    sbs.mkdir()
    for i in range(4):
        a, b = photo(i, (64, 64)), photo(100 + i, (64, 64))
        both = Image.new("RGB", (128, 64))
        both.paste(a, (0, 0))
        both.paste(b, (64, 0))
        both.save(sbs / f"{i}.png")
    r = cli("data", "ingest", sbs, "--name", "facades", "--kind", "aligned", "--direction", "BtoA", "--size", "32",
            "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "facades")
    assert m.counts == {"train": 4}
    folders = tmp_path / "ab"
    (folders / "A").mkdir(parents=True)
    (folders / "B").mkdir()
    for name in ("x.png", "y.png", "z.png"):
        photo(hash(name) % 100, (40, 40)).save(folders / "A" / name)
    for name in ("z.png", "y.png", "only_b.png"):
        photo(hash(name) % 100 + 1, (40, 40)).save(folders / "B" / name)
    r = cli("data", "ingest", folders, "--name", "abpairs", "--kind", "aligned", "--size", "32", "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "abpairs")
    assert m.counts == {"train": 2}  # y and z matched by name; x and only_b have no partner
    assert {s["file"] for s in m.skipped} == {"A/x.png", "B/only_b.png"}


def test_unaligned_domains(stack, cli, tmp_path):
    root = tmp_path / "horse2zebra"
    for folder, n in (("trainA", 5), ("trainB", 3), ("testA", 2), ("testB", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            photo(i + len(folder) * 10, (40, 40)).save(root / folder / f"{i}.png")
    r = cli("data", "ingest", root, "--name", "h2z", "--kind", "unaligned", "--size", "32")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "h2z")
    assert m.kind == "unpaired"
    assert sum(s.rows for s in m.shards("train", "a")) == 5 and sum(s.rows for s in m.shards("val", "b")) == 1


def test_bad_ingest_options_fail_clearly(stack, cli, tmp_path):
    r = cli("data", "ingest", "--sample", "--name", "x", "--degrade", "blur:3")
    assert r.exit_code == 1 and "unknown degradation 'blur:3'" in r.output
    r = cli("data", "ingest", tmp_path / "nope", "--name", "x")
    assert r.exit_code == 1 and "does not exist" in r.output
    r = cli("data", "show", "never-ingested")
    assert r.exit_code == 1 and "not found" in r.output


def test_verify_catches_a_tampered_shard(stack, cli, messy_folder):
    cli("data", "ingest", messy_folder, "--name", "tamper", "--size", "32")
    s = Storage(stack)
    shard = read_manifest(s, "tamper").splits["train"][0]
    key = dataset_prefix("tamper") + shard.path
    data = bytearray(s.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    s.put_bytes(key, bytes(data))
    r = cli("data", "verify", "tamper")
    assert r.exit_code == 1 and "sha256 mismatch" in r.output
    s.put_bytes(key, bytes(data) + b"junk")  # size changes too: the stream refuses it up front
    from jobs.data.stream import load_dataset

    with pytest.raises(Img2ImgError, match="does not match its manifest"):
        load_dataset("tamper", "train", stack)


def test_show_verify_rm_as_library_functions(stack, tmp_path):
    """What `data show|verify|rm` do, called directly (the CLI only prints the results)."""
    from jobs.data.browse import delete_dataset, describe, verify_dataset, write_preview
    from registry.manifest import list_manifests

    s = Storage(stack)
    m = read_manifest(s, "messy")
    info = describe(m)
    assert info["counts"] == m.counts and info["sha256"] == m.sha256 and info["direction"] is None
    out = write_preview(s, m, tmp_path / "grid.png")
    assert Image.open(out).width > 48 * 2 and os.listdir(tmp_path) == ["grid.png"]  # no temp file left
    shards = sum(len(v) for v in m.splits.values())
    assert verify_dataset(s, "messy") == shards

    class DiesAfterTheManifest(Storage):  # a delete interrupted between the manifest and the shards
        def delete_prefix(self, prefix):
            raise OSError("interrupted")

    with pytest.raises(OSError):
        delete_dataset(DiesAfterTheManifest(stack), "messy")
    assert "messy" not in [x.name for x in list_manifests(s)]  # readers never see a half-deleted set
    with pytest.raises(Img2ImgError, match="not found"):
        verify_dataset(s, "messy")
    pairs = read_manifest(s, "abpairs")
    assert delete_dataset(s, "abpairs") == sum(len(v) for v in pairs.splits.values()) + 1
    assert not s.list(dataset_prefix("abpairs"))


def test_data_rm_deletes_the_whole_dataset(stack, cli):
    from jobs.data.browse import describe

    facades = read_manifest(Storage(stack), "facades")
    assert describe(facades)["direction"] == "BtoA"
    r = cli("data", "rm", "facades", "-y")
    assert r.exit_code == 0 and f"({len(facades.splits['train']) + 1} objects)" in r.output, r.output
    assert not Storage(stack).list(dataset_prefix("facades"))
    r = cli("data", "rm", "facades", "-y")
    assert r.exit_code == 1 and "not found" in r.output


def test_interrupted_overwrite_keeps_the_old_dataset_and_resumes_to_the_same_dataset(stack, cli, tmp_path):
    src, first = tmp_path / "many", tmp_path / "first"
    src.mkdir()
    first.mkdir()
    for i in range(40):
        photo(i, (64, 64)).save(src / f"{i:02d}.png")
    for i in range(4):
        photo(100 + i, (64, 64)).save(first / f"{i}.png")
    assert cli("data", "ingest", first, "--name", "resumed", "--size", "32").exit_code == 0
    s = Storage(stack)
    old = read_manifest(s, "resumed")
    args = [str(src), "--name", "resumed", "--size", "32", "--copies", "3", "--shard-rows", "4", "--workers", "1",
            "--overwrite"]
    proc = subprocess.Popen([sys.executable, "-m", "img2img_cli", "data", "ingest", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
                            start_new_session=True, text=True)
    s = Storage(stack)
    deadline = time.time() + 60
    while len(s.list(dataset_prefix("resumed") + "_ingest/")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, f"the ingest ended (exit {proc.returncode}) before it was interrupted: {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the CLI and its worker processes
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the interrupted ingest did not stop within 60 s") from None
    assert proc.returncode == 130 and "re-run the same command to resume; dataset resumed was left as it was" in err
    assert read_manifest(s, "resumed").sha256 == old.sha256, "killed too late to test resuming"
    assert cli("data", "verify", "resumed").exit_code == 0  # the old dataset: whole and readable
    r = cli("data", "ingest", *args)
    assert r.exit_code == 0, r.output
    assert "reused from an interrupted run" in r.output and " 0 reused" not in r.output
    r = cli("data", "ingest", *[a if a != "resumed" else "fresh" for a in args])
    resumed, fresh = read_manifest(s, "resumed"), read_manifest(s, "fresh")
    assert resumed.counts == fresh.counts == {"train": 108, "val": 12}
    shas = lambda m: [(split, sh.rows, sh.sha256) for split in m.splits for sh in m.splits[split]]  # noqa: E731
    assert shas(resumed) == shas(fresh)  # identical content, no duplicates
    assert resumed.sha256 == fresh.sha256  # one identity, though the shard names differ by version
    assert objects_of(s, "resumed") == referenced(s, "resumed")  # no markers, old or killed-run shards left


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-in-a-terminal", "sigint-to-the-cli-only"])
def test_ctrl_c_stops_an_ingest_at_once_keeps_finished_shards_and_it_resumes(stack, cli, tmp_path, to_group):
    src = tmp_path / "big"
    src.mkdir()
    for i in range(60):
        photo(200 + i, (256, 256)).save(src / f"{i:02d}.png")
    name = "ctrl-c-group" if to_group else "ctrl-c-cli"
    args = [str(src), "--name", name, "--size", "96", "--copies", "4", "--shard-rows", "8", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "img2img_cli", "data", "ingest", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
                            start_new_session=True, text=True)
    s = Storage(stack)
    markers = lambda: len(s.list(dataset_prefix(name) + "_ingest/"))  # noqa: E731  (finished shards)
    deadline = time.time() + 300
    while markers() < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, f"the ingest ended (exit {proc.returncode}) before it was interrupted: {proc.stderr.read()}"
    finished = markers()
    signalled = time.monotonic()
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the interrupted ingest did not stop within 60 s") from None
    took = time.monotonic() - signalled
    assert proc.returncode == 130 and "re-run the same command to resume" in err and "Traceback" not in err, err
    assert took < 3, f"exited {took:.1f} s after Ctrl-C"
    assert markers() <= finished + 2, "shards queued after Ctrl-C were still built"  # 2: one in flight a worker
    assert not s.exists(manifest_key(name))  # no dataset until every shard is written
    r = cli("data", "verify", name)
    assert r.exit_code == 1 and "not found" in r.output
    r = cli("data", "ingest", *args)
    assert r.exit_code == 0, r.output
    assert "reused from an interrupted run" in r.output and " 0 reused" not in r.output
    assert cli("data", "verify", name).exit_code == 0
    assert objects_of(s, name) == referenced(s, name)


def _connect(settings) -> None:
    import ray

    from cluster.stack import Stack

    settings.apply_ray_env()
    ray.init(address=Stack(settings).gcs_address(), log_to_driver=False)


@pytest.fixture(scope="module")
def ray_driver(stack):
    """Runs a check in a Ray driver of its own, a child process connected to the stack's head:
    Ray ends a driver whose raylet or GCS goes away (exit 1, nothing printed), which in the pytest
    process would end the whole run without a word; in a child it fails the check that was running
    (and this module's later ones, BrokenProcessPool). -> run(fn, *args): fn(*args)'s result, or
    its exception re-raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_connect,
                             initargs=(stack,)) as pool:
        yield lambda fn, *args: pool.submit(fn, *args).result(timeout=600)


def _operators(ds) -> list[str]:
    """The dataset's logical operators, source first (one input chain)."""
    names, op = [], ds._logical_plan.dag
    while op is not None:
        names.append(op.name)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return names[::-1]


def _stream_pass(settings, cache_bytes: int, repeat: int, shuffle: bool) -> None:
    import ray

    from jobs.data.stream import load_dataset

    ds = load_dataset("sample", "train", settings, image_size=32, batch_size=4, cache_bytes=cache_bytes,
                      repeat=repeat, shuffle=shuffle)
    ops = _operators(ds)
    assert ops[-1] == "MapBatches(DecodeBatch)", ops  # the crops stream straight to the workers
    assert ("RandomizeBlockOrder" in ops) == (shuffle and cache_bytes > 0), ops  # reorders the cached pixels
    batch = ds.take_batch(4)
    assert batch["input"].shape == (4, 3, 32, 32) and batch["target"].dtype == np.float32
    assert -1.0 <= batch["input"].min() and batch["input"].max() <= 1.0
    n = read_manifest(Storage(settings), "sample").counts["train"]

    @ray.remote(num_cpus=0.5)
    def consume(split):
        return [k for b in split.iter_batches(batch_size=4, batch_format="numpy") for k in b["key"]]

    for _epoch in range(2):
        splits = ds.streaming_split(2, equal=False)
        keys = [k for ks in ray.get([consume.remote(s) for s in splits]) for k in ks]
        assert len(keys) == n * repeat and len(set(keys)) == n


@pytest.mark.parametrize("cache_bytes,repeat,shuffle", [(0, 1, False), (10**9, 1, False), (0, 2, True), (10**9, 2, True)],
                         ids=["png-each-read", "decoded-once", "png-each-read-twice-shuffled",
                              "decoded-once-read-twice-shuffled"])
def test_stream_shapes_ranges_and_each_pair_once_per_epoch_across_two_workers(stack, cli, ray_driver, cache_bytes,
                                                                              repeat, shuffle):
    """The same stream whether each read decodes the PNGs or crops the pixels decoded once and
    kept in the object store: every pair `repeat` times a pass, split between two workers. A
    shuffled training stream (what jobs read) reorders before it crops, never after: a reorder of
    the crops is an all-to-all that holds the first batch until the whole pass is cropped."""
    ray_driver(_stream_pass, stack, cache_bytes, repeat, shuffle)


def _val_shapes(settings, name: str) -> set:
    from jobs.data.stream import load_dataset

    return {row["input"].shape for row in load_dataset(name, "val", settings, augment=False).iter_rows()}


def test_whole_images_of_different_sizes_stream_for_validation(stack, cli, ray_driver, tmp_path):
    """--size 0 keeps each photo's own size: the val stream (what training validates on) must
    not try to stack them into one batch."""
    src = tmp_path / "sizes"
    src.mkdir()
    for i, size in enumerate([(64, 48), (80, 64), (96, 72), (72, 96)]):
        photo(i, size).save(src / f"{i}.png")
    r = cli("data", "ingest", src, "--name", "whole", "--size", "0", "--val-fraction", "0.5")
    assert r.exit_code == 0, r.output
    shapes = ray_driver(_val_shapes, stack, "whole")
    assert len(shapes) == 2  # two held-out photos, each at its own size
    assert shapes <= {(3, 48, 64), (3, 64, 80), (3, 72, 96), (3, 96, 72)}
    r = cli("data", "ingest", src, "--name", "whole8", "--size", "0", "--crops", "8")
    assert r.exit_code == 1 and "needs a --size above 0" in r.output


def test_crops_larger_than_a_kept_size_image_are_refused_before_submission(stack, cli, tmp_path):
    """A `--size 0` dataset's random training crops must fit in its smallest training image: a
    larger --image-size is refused by `img2img train` with the fix, not by every worker after start-up."""
    import pyarrow.parquet as pq

    from jobs.training.client import job_client
    from jobs.training.driver import plan_job
    from jobs.training.spec import TrainSpec

    src = tmp_path / "kept"
    src.mkdir()
    sizes = {f"{i}.png": size for i, size in enumerate([(120, 88), (104, 144), (96, 80), (160, 112)])}  # (w, h)
    for i, (name, size) in enumerate(sizes.items()):
        photo(i, size).save(src / name)
    assert cli("data", "ingest", src, "--name", "kept", "--size", "0", "--val-fraction", "0.25").exit_code == 0
    m = read_manifest(Storage(stack), "kept")
    keys = [k for s in m.shards("train") for k in pq.read_table(
        io.BytesIO(Storage(stack).get_bytes(dataset_prefix("kept") + s.path)), columns=["key"])["key"].to_pylist()]
    smallest = min(min(sizes[k.split("#")[0]]) for k in keys)
    assert m.min_side("train") == smallest
    before = len(job_client(stack).list_jobs())
    r = cli("train", "--dataset", "kept", "--variant", "nafnet", "--image-size", smallest + 8)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"its smallest training image is {smallest} px on its short side" in " ".join(r.output.split())
    assert len(job_client(stack).list_jobs()) == before
    plan_job(TrainSpec(dataset="kept", variant="nafnet", image_size=smallest), stack)  # the suggested fix is accepted


def _unpaired_batch(settings) -> tuple:
    from jobs.data.stream import load_dataset

    batch = load_dataset("h2z", "train", settings, image_size=32, domain="b").take_batch(3)
    with pytest.raises(Img2ImgError, match="unpaired"):
        load_dataset("h2z", "train", settings)
    return set(batch), batch["image"].shape


def test_unpaired_stream_yields_one_domain(stack, ray_driver):
    keys, shape = ray_driver(_unpaired_batch, stack)
    assert keys == {"key", "image"} and shape == (3, 3, 32, 32)


def test_the_colorize_demo_dataset_names_its_source_not_a_temporary_folder(stack):
    """The demo ingests only the colour sample photos (through a temporary folder): the manifest
    says where they came from, so `data show` never points at a folder that no longer exists."""
    from img2img_demo.run import _ensure_dataset
    from img2img_demo.tasks import demo_task

    _ensure_dataset(stack, "colour-only", demo_task("colorize"), quick=True, say=lambda _: None, crops=1)
    m = read_manifest(Storage(stack), "colour-only")
    assert m.source == "sample:scikit-image (colour photos)" and m.degradation == "gray"
    assert 0 < m.counts["train"] + m.counts["val"] < 15  # the grey photos left out


def test_a_demo_dataset_made_with_another_spec_is_ingested_again(stack):
    """An older demo's dataset (another degradation) is replaced, not silently reused with
    held-out photos degraded differently from what the model trained on; the same spec is reused."""
    from img2img_demo.run import _ensure_dataset
    from img2img_demo.tasks import DemoTask

    said: list[str] = []
    old = DemoTask("deblur", "gaussian:1.5", "gaussian:1.5", "nafnet", "blurred", "enhanced")
    new = DemoTask("deblur", "random_gaussian:1-2.5", "random_gaussian:1-2.5", "nafnet", "blurred", "enhanced")
    _ensure_dataset(stack, "demo-respec", old, quick=True, say=said.append, crops=1)
    _ensure_dataset(stack, "demo-respec", new, quick=True, say=said.append, crops=1)
    assert read_manifest(Storage(stack), "demo-respec").degradation == "random_gaussian:1-2.5"
    assert "dataset demo-respec was made with gaussian:1.5; this demo uses random_gaussian:1-2.5: ingesting it again" in said
    _ensure_dataset(stack, "demo-respec", new, quick=True, say=said.append, crops=1)
    assert said[-1] == "dataset demo-respec exists: reusing it"
    _ensure_dataset(stack, "demo-respec", new, quick=True, say=said.append, crops=2)  # same spec, more crops
    assert "dataset demo-respec was made with other ingest options: ingesting it again" in said
    assert read_manifest(Storage(stack), "demo-respec").options["crops"] == 2


def test_a_progress_marker_from_before_min_side_is_rebuilt_not_reused(stack):
    """An ingest interrupted on an older version and resumed on this one must not adopt shards
    whose markers lack `min_side`: the dataset would then skip the training-crop check."""
    import hashlib
    import json
    from dataclasses import asdict

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.data.ingest import IngestOptions, ShardPlan, _resumable
    from registry.manifest import Shard

    storage = Storage(stack)
    opts = IngestOptions(name="old-markers", size=None)
    plans = [ShardPlan("train", i, rows=[], version="0123456789ab") for i in range(2)]
    for plan, side in zip(plans, (None, 48)):
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": ["k"], "input": [b"x"], "target": [b"y"]}), buf)
        data = buf.getvalue()
        storage.put_bytes(dataset_prefix(opts.name) + plan.path, data)
        shard = Shard(plan.path, 1, hashlib.sha256(data).hexdigest(), len(data), None, side)
        marker = asdict(shard)
        if side is None:
            del marker["min_side"]  # what the previous version wrote
        storage.put_bytes(dataset_prefix(opts.name) + plan.marker,
                          json.dumps({"fingerprint": "f", "shard": marker, "skipped": []}).encode())
    assert set(_resumable(storage, opts, "f", plans)) == {plans[1].path}
