"""The CLI against the real stack, read as a person at an 80-column terminal and as a script in
a pipe; dataset layouts people really have (pix2pix side-by-side folders with notebook
checkpoints, trainA/trainB pairs, S3 prefixes with hidden objects)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from cluster.storage import Storage
from registry.manifest import read_manifest

pytestmark = pytest.mark.integration

LONG_MODEL = "a-registered-model-with-a-long-name-for-narrow-terminals"


def photo(seed, size):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


@pytest.fixture(params=["pipe", "terminal-80"])
def narrow(request, monkeypatch):
    """COLUMNS=80, either as a pipe (CliRunner's stdout) or as a terminal (rich told it is one)."""
    monkeypatch.setenv("COLUMNS", "80")
    if request.param == "terminal-80":
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
    return request.param


@pytest.fixture(scope="module")
def registered(stack):
    """A registered model with a long name, two versions (no champion yet) and tags, made
    through the real MLflow registry (the CLI lists registry entries; no weights needed)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    exp = client.get_experiment_by_name("cli-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment("cli-tests")
    client.create_registered_model(LONG_MODEL)
    runs = []
    for psnr in (25.5, 26.25):
        run = client.create_run(exp_id)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(LONG_MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id,
                                         tags={"variant": "nafnet", "dataset": "photos-long-dataset-name",
                                               "val_psnr": str(psnr)})
        runs.append((mv.version, run.info.run_id))
    return runs


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_models_ls_keeps_names_versions_and_run_ids_whole(stack, cli, registered, narrow):
    r = cli("models", "ls", LONG_MODEL, "--wide")
    assert r.exit_code == 0, r.output
    for _, run_id in registered:
        row = lines_with(r.output, run_id)
        assert row, f"run id {run_id} was cut:\n{r.output}"
        if narrow == "pipe":  # `img2img models ls | grep NAME` finds whole rows
            assert LONG_MODEL in row[0] and "photos-long-dataset-name" in row[0]
    assert lines_with(r.output, LONG_MODEL)


def test_models_ls_json_has_stable_keys(stack, cli, registered):
    r = cli("models", "ls", LONG_MODEL, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["version"] for d in data] == [v for v, _ in registered]
    assert set(data[0]) == {"model", "version", "variant", "dataset", "val_psnr", "val_ssim", "val_gain_db",
                            "val_cycle_psnr", "parent", "psnr_def", "worse_than_input", "eval_set", "eval",
                            "aliases", "run_id", "created"}
    assert data[1]["val_psnr"] == 26.25 and data[1]["run_id"] == registered[1][1] and data[0]["aliases"] == []


def test_unknown_model_is_worded_the_same_everywhere(stack, cli):
    outputs = [cli(*args).output for args in (["models", "ls", "nosuch"], ["models", "rollback", "nosuch"],
                                               ["models", "promote", "nosuch", "--best"])]
    assert outputs[0] == outputs[1] == outputs[2] == "Error: no registered model 'nosuch'; list them with: img2img models ls\n"


def test_model_without_champion_hints_to_promote(stack, cli, registered, tmp_path):
    img = tmp_path / "x.png"
    photo(1, (16, 16)).save(img)
    r = cli("enhance", img, "--local", "--model", LONG_MODEL, "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert r.output == (f"Error: model '{LONG_MODEL}' has no champion yet; promote a version with: "
                        f"img2img models promote {LONG_MODEL} --best\n")
    r = cli("models", "rollback", LONG_MODEL)
    assert r.exit_code == 1 and f"img2img models promote {LONG_MODEL} --best" in r.output
    r = cli("enhance", img, "--local", "--model", f"{LONG_MODEL}/9", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "has no version '9' (it has: 1, 2)" in r.output
    assert not (tmp_path / "out").exists()  # nothing written, nothing half-written


def test_promote_suggests_the_reload_command_on_one_line(stack, cli, registered, blur_dataset, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cluster.storage import Storage
    from registry.manifest import read_manifest
    from registry.tracking import eval_tags

    # The gate compares versions on the model's evaluation set: give these weightless versions results on it.
    sha = read_manifest(Storage(stack), blur_dataset).sha256
    client = MlflowClient(stack.mlflow_uri)
    client.set_registered_model_tag(LONG_MODEL, "eval_dataset", blur_dataset)
    for (version, _), psnr in zip(registered, (25.5, 26.25)):
        for k, v in eval_tags({"dataset": blur_dataset, "split": "val", "dataset_sha256": sha, "images": 1,
                               "metrics": {"psnr": psnr}}).items():
            client.set_model_version_tag(LONG_MODEL, version, k, v)
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("models", "promote", LONG_MODEL, "--best")
    assert r.exit_code == 0, r.output
    assert f"img2img serve reload --model {LONG_MODEL}@champion" in r.output.splitlines()[-1]


def test_stack_status_json_and_quiet_store_log(stack, cli):
    r = cli("stack", "status", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["service"] for d in data] == ["s3", "mlflow", "ray"]
    assert all(d["healthy"] is True and d["url"].startswith("http://127.0.0.1:") for d in data)
    log = cli("stack", "logs", "s3", "-n", "5000").output
    # the store's maintenance worker used to dial an admin gRPC port nothing listened on
    assert "connection refused" not in log and "Plugin worker" not in log
    for n in ("0", "-5"):  # `[-0:]` was the whole log
        r = cli("stack", "logs", "s3", "-n", n)
        assert r.exit_code == 1 and f"--lines must be at least 1, got {n}" in r.output


def test_jobs_ls_and_status_json_keep_ids_whole(stack, cli, narrow):
    from ray.job_submission import JobSubmissionClient

    from tests.integration.conftest import wait_job

    stack.apply_ray_env()
    client = JobSubmissionClient(stack.ray_address)
    job_id = client.submit_job(entrypoint="python -c 'print(1)'",
                               metadata={"img2img": "train", "variant": "nafnet", "dataset": "photos-long-dataset-name"})
    assert wait_job(client, job_id, timeout=120) == "SUCCEEDED"
    r = cli("jobs", "ls")
    assert r.exit_code == 0, r.output
    row = lines_with(r.output, job_id)
    assert row, f"job id {job_id} was cut:\n{r.output}"
    if narrow == "pipe":
        assert "SUCCEEDED" in row[0] and "photos-long-dataset-name" in row[0]
    listed = json.loads(cli("jobs", "ls", "--json").stdout)
    assert {"id", "status", "model", "variant", "dataset", "submitted", "duration"} <= set(listed[0])
    assert any(j["id"] == job_id and j["status"] == "SUCCEEDED" for j in listed)
    info = json.loads(cli("jobs", "status", job_id, "--json").stdout)
    assert info["job_id"] == job_id and info["status"] == "SUCCEEDED" and info["dataset"] == "photos-long-dataset-name"


@pytest.fixture(scope="module")
def pix2pix_folder(tmp_path_factory):
    """Laid out like the pix2pix datasets (A|B side by side), with what real folders hold too."""
    root = tmp_path_factory.mktemp("facades")
    (root / "train").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    for i in range(4):
        photo(i, (64, 32)).save(root / "train" / f"{i}.jpg")
    photo(9, (64, 32)).save(root / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    photo(10, (64, 32)).save(root / "train" / "._0.jpg")  # macOS resource fork
    photo(11, (64, 32)).save(root / "train" / "odd.png")
    Image.fromarray(np.hstack([np.asarray(photo(12, (32, 32))), np.zeros((32, 1, 3), np.uint8),
                               np.asarray(photo(13, (32, 32)))])).save(root / "train" / "seam.png")  # 65 wide
    for name, size in (("square.png", (32, 32)), ("photo.png", (60, 40)), ("tall.png", (32, 64))):
        photo(20, size).save(root / "train" / name)
    (root / "train" / "README.txt").write_text("facades")
    return root


def test_side_by_side_ingest_skips_hidden_and_non_pairs_with_reasons(stack, cli, pix2pix_folder, narrow):
    name = f"facades-{narrow}"
    r = cli("data", "ingest", pix2pix_folder, "--name", name, "--kind", "aligned", "--size", "32",
            "--val-fraction", "0.2")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), name)
    assert sum(m.counts.values()) == 6  # 0-3.jpg, odd.png (63 wide), seam.png (65 wide)
    reasons = {s["file"]: s["reason"] for s in m.skipped}
    assert reasons[".ipynb_checkpoints/"] == "hidden folder (name starts with a dot)"
    assert reasons["train/._0.jpg"] == "hidden file (name starts with a dot)"
    assert reasons["train/README.txt"].startswith("not an image file")
    for f, size in (("square.png", "32x32"), ("photo.png", "60x40"), ("tall.png", "32x64")):
        assert reasons[f"train/{f}"].startswith(f"{size} is not an A|B side-by-side pair")
    assert not any("checkpoint" in k for k in reasons if not k.startswith(".ipynb"))
    for file in reasons:  # every skip is in the summary, whole, with its reason
        assert any(file in line and reasons[file][:20] in line for line in r.output.splitlines())
    shown = cli("data", "show", name)
    assert "direction=AtoB" in shown.output and "train/square.png: 32x32 is not" in shown.output
    data = json.loads(cli("data", "show", name, "--json").stdout)
    assert data["direction"] == "AtoB" and len(data["skipped"]) == len(reasons) and data["counts"] == m.counts
    import pyarrow.parquet as pq

    storage = Storage(stack)
    rows = [row for shards in m.splits.values() for shard in shards
            for row in pq.read_table(io.BytesIO(storage.get_bytes(f"datasets/{name}/{shard.path}"))).to_pylist()]
    seam = next(row for row in rows if row["key"].startswith("train/seam.png"))
    # 65 px wide: the middle (seam) column is dropped, so A and B are both whole and aligned
    for column, seed in (("input", 12), ("target", 13)):
        got = np.asarray(Image.open(io.BytesIO(seam[column])).convert("RGB"))
        assert np.array_equal(got, np.asarray(photo(seed, (32, 32))))


def test_trainA_trainB_folders_ingest_as_pairs_matched_by_name(stack, cli, tmp_path):
    root = tmp_path / "paired"
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        photo(i, (32, 32)).save(root / "trainA" / f"{i}.png")
        Image.fromarray(255 - np.asarray(photo(i, (32, 32)))).save(root / "trainB" / f"{i}.png")
    photo(7, (32, 32)).save(root / "trainA" / "lonely.png")
    photo(8, (32, 32)).save(root / "testA" / "t.png")
    Image.fromarray(255 - np.asarray(photo(8, (32, 32)))).save(root / "testB" / "t.png")
    r = cli("data", "ingest", root, "--name", "ab-named", "--kind", "aligned", "--size", "32", "--direction", "BtoA")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "ab-named")
    assert m.counts == {"train": 3, "val": 1}  # testA/testB is the validation split
    assert m.skipped == [{"file": "trainA/lonely.png", "reason": "no file of the same name in trainB/"}]
    import pyarrow.parquet as pq

    [shard] = m.shards("train")  # found through the manifest, as every reader finds them
    rows = pq.read_table(io.BytesIO(Storage(stack).get_bytes(f"datasets/ab-named/{shard.path}"))).to_pylist()
    for row in rows:  # BtoA: the input is the B image (the inverted one) of the same name
        a = np.asarray(Image.open(io.BytesIO(row["target"])).convert("RGB")).astype(int)
        b = np.asarray(Image.open(io.BytesIO(row["input"])).convert("RGB")).astype(int)
        assert np.abs(a + b - 255).mean() < 3
    (root / "testB" / "t.png").unlink()
    (root / "testB").rmdir()
    r = cli("data", "ingest", root, "--name", "ab-half", "--kind", "aligned", "--size", "32")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "found folder testA/ but no testB/ beside it; accepted layouts: side-by-side A|B images" in r.output


def test_s3_source_skips_hidden_objects(stack, cli):
    src = Storage(stack, bucket="cli-src")
    src.ensure_bucket()
    for key in ("set/a.png", "set/b.png", "set/.ipynb_checkpoints/a-checkpoint.png", "set/.hidden.png",
                "set/sub/.DS_Store"):
        buf = io.BytesIO()
        photo(len(key), (32, 32)).save(buf, "PNG")
        src.put_bytes(key, buf.getvalue())
    r = cli("data", "ingest", "s3://cli-src/set", "--name", "from-s3", "--size", "32", "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    m = read_manifest(Storage(stack), "from-s3")
    assert m.counts == {"train": 2}
    assert {s["file"] for s in m.skipped} == {".ipynb_checkpoints/", ".hidden.png", "sub/.DS_Store"}
    r = cli("data", "ingest", "s3://no-such-bucket/x", "--name", "x")
    assert r.exit_code == 1 and "bucket 'no-such-bucket' does not exist" in r.output and "stack up" not in r.output


def test_unpaired_preview_shows_both_domains_with_labels(stack, cli, unpaired_dataset, tmp_path):
    out = tmp_path / "h2z.png"
    r = cli("data", "show", unpaired_dataset, "--preview", out)
    assert r.exit_code == 0, r.output
    arr = np.asarray(Image.open(out).convert("RGB")).astype(int)
    last_row = arr[-4 - 32:-4]  # the bottom row of 32 px images above the 4 px padding
    padding = (last_row == 255).all(axis=(0, 2))  # columns that are white all the way down
    runs = np.diff(np.concatenate([[0], (~padding).astype(int), [0]]))
    assert (runs == 1).sum() == 2  # two images side by side: domain A and domain B
    assert (arr[:14] < 100).all(axis=-1).any()  # dark caption text above the columns


def test_ingest_errors_come_before_any_progress(stack, cli, tmp_path):
    for args in (["--sample", "--kind", "bogus"], [tmp_path / "nope"], ["s3://no-such-bucket/x"],
                 ["--sample", "--name", "bad/name"]):
        argv = ["data", "ingest", *args] + ([] if "--name" in args else ["--name", "x"])
        r = cli(*argv)
        assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
        assert "━" not in r.output and "ingest x" not in r.output
