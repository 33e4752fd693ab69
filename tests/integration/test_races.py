"""Every get-or-create raced by several clients at once ends well: MLflow experiment, registered
model and its evaluation-set tag, S3 bucket, a dataset name ingested by several processes.

Each test starts its clients together (a barrier for threads; processes started back to back,
each taking seconds) on names no other test uses, so the thing is created fresh by the race."""

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cluster.storage import Storage
from registry.manifest import dataset_prefix, manifest_key, read_manifest

pytestmark = pytest.mark.integration
N = 6  # clients at once


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def together(fn, n: int = N) -> list:
    """fn(i) in n threads released at the same moment -> results (or the exception raised)."""
    gate = threading.Barrier(n)

    def call(i):
        gate.wait()
        try:
            return fn(i)
        except Exception as e:  # noqa: BLE001  (the test shows what went wrong, per client)
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def test_experiment_created_by_many_clients_at_once_is_one_experiment(stack):
    from mlflow.tracking import MlflowClient

    from registry.tracking import experiment_id

    name = fresh("race-exp")
    ids = together(lambda i: experiment_id(MlflowClient(stack.mlflow_uri), name))
    assert not [e for e in ids if isinstance(e, Exception)], ids
    assert len(set(ids)) == 1 and MlflowClient(stack.mlflow_uri).get_experiment_by_name(name).experiment_id == ids[0]


def test_a_deleted_experiment_is_a_clear_error(stack):
    from mlflow.tracking import MlflowClient

    from cluster.errors import Img2ImgError
    from registry.tracking import experiment_id

    client = MlflowClient(stack.mlflow_uri)
    name = fresh("race-deleted")
    client.delete_experiment(experiment_id(client, name))
    with pytest.raises(Img2ImgError, match="was deleted; restore it"):
        experiment_id(client, name)


def _register(name: str, seed: int) -> str:
    from cluster.settings import get_settings
    from tests.integration.conftest import register_tiny_autoencoder

    return register_tiny_autoencoder(get_settings(), name, seed)


def test_a_model_registered_by_several_processes_at_once_gets_one_version_each(stack, blur_dataset):
    import multiprocessing

    from registry.models import eval_set, set_eval_set, versions

    name = fresh("race-model")
    n = 4  # processes (each imports torch and MLflow: heavier than a thread)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = list(pool.map(_register, [name] * n, range(n)))
    assert sorted(got, key=int) == [str(v) for v in range(1, n + 1)]
    assert sorted(v.version for v in versions(stack, name)) == sorted(got)
    # the evaluation-set tag, an eval result tag and the champion alias, each set by N clients at
    # once (MLflow's SQL store inserts a new key after reading it absent: all but one insert collide)
    from mlflow.tracking import MlflowClient

    from registry.tracking import upsert

    outcome = together(lambda i: set_eval_set(stack, name, blur_dataset, "val"))
    assert outcome == [None] * N and eval_set(stack, name) == (blur_dataset, "val")
    client = MlflowClient(stack.mlflow_uri)
    outcome = together(lambda i: upsert(client.set_model_version_tag, name, "2", "eval.blur.val.psnr", "25.0"))
    assert outcome == [None] * N and client.get_model_version(name, "2").tags["eval.blur.val.psnr"] == "25.0"
    outcome = together(lambda i: upsert(client.set_registered_model_alias, name, "champion", "2"))
    assert outcome == [None] * N and client.get_model_version_by_alias(name, "champion").version == "2"


def test_a_bucket_created_by_many_clients_at_once(stack):
    bucket = fresh("race-bucket")
    outcome = together(lambda i: Storage(stack, bucket=bucket).ensure_bucket())
    try:
        assert outcome == [None] * N
        Storage(stack, bucket=bucket).check()
    finally:
        Storage(stack, bucket=bucket).client.remove_bucket(bucket)


# ---- one dataset name, several `img2img data ingest` processes at once --------------------------------
def photos(root, n: int, seed: int):
    root.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i:02d}.png")
    return root


def ingest_at_once(sources: list, name: str) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "img2img_cli", "data", "ingest", str(src), "--name", name,
                               "--size", "32", "--copies", "2", "--shard-rows", "4", "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for src in sources]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def assert_one_whole_dataset(stack, name: str, results: list[subprocess.CompletedProcess]) -> None:
    """At least one ingest succeeded; every other one said why in one `Error:` line; the dataset
    verifies, and the store holds exactly what its manifest lists (no mix, no leftovers)."""
    from jobs.data.browse import verify_dataset

    assert any(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    for r in results:
        if r.returncode != 0:
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
            assert "already exists" in lines[0] or "another ingest" in lines[0], lines[0]
    s = Storage(stack)
    manifest = read_manifest(s, name)
    assert verify_dataset(s, name) == sum(len(shards) for shards in manifest.splits.values())
    listed = {manifest_key(name)} | {dataset_prefix(name) + sh.path for shards in manifest.splits.values()
                                     for sh in shards}
    assert {o.key for o in s.list(dataset_prefix(name))} == listed


def test_the_same_ingest_run_by_four_processes_at_once_gives_one_dataset(stack, tmp_path):
    src = photos(tmp_path / "src", 24, seed=1)
    name = fresh("race-same")
    results = ingest_at_once([src] * 4, name)
    assert_one_whole_dataset(stack, name, results)
    assert read_manifest(Storage(stack), name).counts == {"train": 44, "val": 4}


@pytest.mark.parametrize("same_names", [False, True], ids=["other-names", "same-names-other-pixels"])
def test_different_ingests_of_one_name_at_once_leave_exactly_one_of_them(stack, tmp_path, same_names):
    """Four folders into one dataset name at once; with `same_names` every folder holds 24 files
    named alike (00.png ...), other pixels: the names alone must not make them one ingest."""
    sources = [photos(tmp_path / f"src{i}", 24 if same_names else 20 + 4 * i, seed=10 + i) for i in range(4)]
    name = fresh("race-diff")
    results = ingest_at_once(sources, name)
    assert_one_whole_dataset(stack, name, results)
    manifest = read_manifest(Storage(stack), name)
    winners = [str(src) for src, r in zip(sources, results) if r.returncode == 0]
    assert manifest.source in winners  # the dataset is one of them, whole
    assert len(winners) == 1  # different content: exactly one run can say it made the dataset


def _champion_state(stack, name: str) -> tuple[str, list[str]]:
    import json

    from registry.models import CHAMPION, HISTORY, alias_version, model_tags

    return alias_version(stack, name, CHAMPION), json.loads(model_tags(stack, name).get(HISTORY, "[]"))


def _at_the_same_instant(name: str, *actions: str) -> list[subprocess.CompletedProcess]:
    """Each of `actions` (`rollback`, or `promote:VERSION:JUDGED_AGAINST`) on model `name` in its own
    process, all started at one instant once every process has imported what it needs (a CLI's
    start-up time would keep them apart); a refusal exits 1 with its `Error:` line, as the CLI does."""
    script = ("import sys, time\n"
              "from cluster.errors import Img2ImgError\nfrom cluster.settings import get_settings\n"
              "from registry.models import make_champion, rollback\n"
              "settings, name, action, at = get_settings(), sys.argv[1], sys.argv[2], float(sys.argv[3])\n"
              "time.sleep(max(0.0, at - time.time()))\n"
              "try:\n"
              "    if action == 'rollback':\n        print(rollback(settings, name))\n"
              "    else:\n        _, version, current = action.split(':')\n"
              "        make_champion(settings, name, version, current)\n"
              "except Img2ImgError as e:\n    sys.exit(f'Error: {e}')\n")
    at = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", script, name, a, at], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy()) for a in actions]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def test_two_champion_changes_at_once_never_lose_one_another(stack):
    """Two rollbacks at once (what `models rollback` calls), then a promotion and a rollback at once,
    started at one instant in separate processes: each either happens whole, one after the other,
    or is refused with one `Error:` line; the champion and its history always say what the
    successful ones did (no promotion lost, no rollback two steps at once)."""
    from registry.models import make_champion
    from tests.integration.conftest import register_tiny_autoencoder

    name = fresh("race-champion")
    for seed in (1, 2, 3, 4):
        register_tiny_autoencoder(stack, name, seed=seed)
    make_champion(stack, name, "1", None)
    make_champion(stack, name, "2", "1")
    make_champion(stack, name, "3", "2")
    assert _champion_state(stack, name) == ("3", ["1", "2"])
    results = _at_the_same_instant(name, "rollback", "rollback")
    done = [r for r in results if r.returncode == 0]
    for r in results:
        if r.returncode:
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 1 and len(lines) == 1 and "another client is changing the champion" in lines[0], r
    assert done and _champion_state(stack, name) == {1: ("2", ["1"]), 2: ("1", [])}[len(done)]
    # (new champion, demoted, history left): one step each, 3 -> 2, then 2 -> 1
    assert sorted(r.stdout.split("[")[0] for r in done) == ["('1', '2', ", "('2', '3', "][2 - len(done):]

    make_champion(stack, name, "3", _champion_state(stack, name)[0])  # champion 3 again, history ending in 2 or 1
    before = _champion_state(stack, name)
    promoted, rolled = _at_the_same_instant(name, "promote:4:3", "rollback")
    for r in (promoted, rolled):
        assert r.returncode == 0 or ("another client" in r.stderr and len(r.stderr.strip().splitlines()) == 1), r
    assert promoted.returncode == 0 or rolled.returncode == 0
    history = before[1]
    expected = {(True, True): ("3", history),  # promoted, then rolled back (a rollback first refuses the promotion)
                (True, False): ("4", history + ["3"]),
                (False, True): (history[-1], history[:-1])}
    assert _champion_state(stack, name) == expected[promoted.returncode == 0, rolled.returncode == 0], (promoted, rolled)
