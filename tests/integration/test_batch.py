"""`img2img batch` on the real stack: a prefix with nested folders, mixed formats and sizes, a
16-bit PNG, an RGBA PNG, a corrupt file and a non-image. Every good file is written at its
relative path with the bytes the endpoint's code gives for the same model version (and, through
a deployed endpoint, the bytes `POST /enhance` answers, which refuses a video); the two bad ones
are listed; a re-run writes nothing; a dry run estimates the time from the rate the first run
recorded, whose MLflow run holds a before/after grid; a local folder goes up and comes back."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from cluster.storage import Storage
from tests.integration.conftest import (
    encoded,
    endpoint_restored,
    register_tiny_autoencoder,
    wait_job,
)
from tests.videos import synthetic_video

MODEL = "batch-tiny"
RNG = np.random.default_rng(7)


def _files() -> dict[str, bytes]:
    """Relative path -> bytes: the good ones (mixed formats, sizes, 16-bit, alpha) and two bad."""
    rgb = lambda h, w: Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    sixteen = Image.fromarray(RNG.integers(0, 65536, (24, 20), dtype=np.uint16).astype(np.int32)).convert("I;16")
    rgba = Image.fromarray(RNG.integers(0, 256, (18, 26, 4), dtype=np.uint8), "RGBA")
    good = {"a.png": encoded(rgb(30, 40)), "sub/b.jpg": encoded(rgb(21, 33), "JPEG", quality=90),
            "sub/deeper/c16.png": encoded(sixteen), "sub/alpha.png": encoded(rgba),
            "sub/deeper/d.webp": encoded(rgb(16, 48), "WEBP", lossless=True)}
    return {**good, "broken.png": good["a.png"][:60], "notes.txt": b"not an image\n"}


BAD = {"broken.png", "notes.txt"}


def _expected(settings, version: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """The endpoint's own code (decode -> tiles -> model -> merge -> PNG) on this machine."""
    from registry.loading import load
    from translator import OVERLAP, TILE
    from translator.compute import enhance_alone

    model = load(settings.mlflow_uri, MODEL, version, runtime="torch", threads=1, precision="fp32")
    return {rel: enhance_alone(body, 100_000_000, model, "AtoB", "png", TILE, OVERLAP)[0]
            for rel, body in files.items() if rel not in BAD}


def _png(rel: str) -> str:
    return rel.rsplit(".", 1)[0] + ".png"


@pytest.fixture(scope="module")
def batch_model(stack):
    return register_tiny_autoencoder(stack, MODEL, seed=11)


@pytest.fixture(scope="module")
def first_run(stack, batch_model, cli):
    """The files under s3://BUCKET/scans/ enhanced into s3://BUCKET/scans-out/ once."""
    store = Storage(stack)
    files = _files()
    for rel, body in files.items():
        store.put_bytes(f"scans/{rel}", body)
    result = cli("batch", f"s3://{stack.bucket}/scans/", "-o", f"s3://{stack.bucket}/scans-out/",
                 "--model", f"{MODEL}/{batch_model}", "--follow", "--json")
    assert result.exit_code == 0, result.output
    return files, json.loads(result.output[result.output.index("{"):])


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    from img2img_cli.app import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def test_every_good_file_is_written_at_its_path_as_the_endpoint_code_writes_it(stack, batch_model, first_run):
    files, summary = first_run
    store = Storage(stack)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (5, 0, 2)
    assert sorted(f["key"] for f in summary["failures"]) == ["scans/broken.png", "scans/notes.txt"]
    for rel, want in _expected(stack, batch_model, files).items():
        assert store.get_bytes(f"scans-out/{_png(rel)}") == want, rel
    c16 = Image.open(io.BytesIO(store.get_bytes("scans-out/sub/deeper/c16.png")))
    alpha = Image.open(io.BytesIO(store.get_bytes("scans-out/sub/alpha.png")))
    assert c16.mode.startswith("I;16") or c16.mode == "I" and alpha.mode == "RGBA"
    manifest = json.loads(store.get_bytes("scans-out/batch-manifest.json"))
    by_key = {f["key"]: f for f in manifest["files"]}
    assert by_key["scans/notes.txt"]["status"] == "failed" and "not an image" in by_key["scans/notes.txt"]["reason"]
    assert by_key["scans/a.png"] | {"seconds": 0} == {"key": "scans/a.png", "size": len(files["a.png"]),
                                                      "out_key": "scans-out/a.png", "status": "written",
                                                      "reason": "", "seconds": 0}


def test_a_rerun_writes_nothing_and_the_job_is_listed(stack, batch_model, first_run, cli):
    store = Storage(stack)
    before = {o.key: o.modified for o in store.list("scans-out/") if not o.key.endswith("manifest.json")}
    again = cli("batch", f"s3://{stack.bucket}/scans/", "-o", f"s3://{stack.bucket}/scans-out/",
                "--model", f"{MODEL}/{batch_model}", "--follow", "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output[again.output.index("{"):])
    assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 5, 2)
    assert {o.key: o.modified for o in store.list("scans-out/") if not o.key.endswith("manifest.json")} == before
    listed = cli("jobs", "ls")
    assert summary["job_id"] in listed.output and f"batch {MODEL}/{batch_model}" in listed.output


def test_dry_run_lists_the_plan_and_submits_nothing(stack, batch_model, first_run, cli):
    result = cli("batch", f"s3://{stack.bucket}/scans/", "-o", f"s3://{stack.bucket}/dry-out/",
                 "--model", f"{MODEL}/{batch_model}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "7 of 7 files would be processed" in result.output and "dry-out/sub/deeper/d.png" in result.output
    # the time comes from the seconds per megapixel the first run measured
    assert f"measured by batch run {first_run[1]['run_id']}" in result.output and "estimated" in result.output
    assert not Storage(stack).list("dry-out/")


def test_the_batch_run_holds_its_rate_and_a_before_after_grid(stack, first_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    run = client.get_run(first_run[1]["run_id"])
    assert run.data.metrics["seconds_per_megapixel"] > 0 and run.data.metrics["written"] == 5
    grid = Image.open(client.download_artifacts(run.info.run_id, "batch/before-after.png"))
    assert grid.mode == "RGB" and grid.width > 2 * 20 and grid.height > 4 * 16  # 4 rows of before | after


def test_a_local_folder_goes_up_and_comes_back_at_the_same_paths(stack, batch_model, first_run, cli, tmp_path):
    files = {rel: body for rel, body in first_run[0].items() if rel in ("a.png", "sub/b.jpg")}
    for rel, body in files.items():
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_bytes(body)
    result = cli("batch", tmp_path / "in", "-o", tmp_path / "out", "--model", f"{MODEL}/{batch_model}")
    assert result.exit_code == 0, result.output
    want = _expected(stack, batch_model, files)
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*.png")} \
        == {_png(rel): body for rel, body in want.items()}


def test_batch_outputs_are_the_bytes_post_enhance_answers_and_a_video_is_refused(stack, batch_model, first_run,
                                                                                  tmp_path):
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling

    files, _ = first_run
    store = Storage(stack)
    with endpoint_restored(stack):
        deploy(stack, f"{MODEL}/{batch_model}", ReplicaOptions(runtime="torch", precision="fp32"),
               Scaling(min_replicas=1, max_replicas=1, num_cpus=1), wait_s=300)
        movie = synthetic_video(tmp_path / "movie.mp4", seconds=1).read_bytes()
        r = httpx.post(stack.serve_url + "/enhance", content=movie, timeout=120)
        assert r.status_code == 415 and "img2img batch" in r.json()["error"], r.text
        for rel, body in files.items():
            r = httpx.post(stack.serve_url + "/enhance", content=body, timeout=120)
            if rel in BAD:
                assert r.status_code in (400, 415), (rel, r.status_code)
            else:
                assert r.status_code == 200 and r.content == store.get_bytes(f"scans-out/{_png(rel)}"), rel


def test_the_same_batch_twice_at_once_is_refused_and_keeps_the_staged_files(stack, batch_model, first_run, tmp_path):
    """Two identical local commands at once would share one staging prefix, and the first to end
    would delete what the other still reads: the second is refused, naming the first."""
    from cluster.errors import Img2ImgError
    from jobs.batch import client
    from jobs.manage import stop
    from jobs.training.client import job_client

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(first_run[0]["a.png"])
    req = client.prepare(stack, str(tmp_path / "in"), str(tmp_path / "out"), f"{MODEL}/{batch_model}")
    job = client.submit(stack, req)
    try:
        with pytest.raises(Img2ImgError, match=f"already queued or running as job {job}"):
            client.submit(stack, client.prepare(stack, str(tmp_path / "in"), str(tmp_path / "out"),
                                                f"{MODEL}/{batch_model}"))
        assert client.clean_staging(stack, req) == 0  # another's job still needs them
        assert Storage(stack).list(req.staging)
    finally:
        stop(job_client(stack), stack, job)
    assert wait_job(job_client(stack), job, timeout=300) == "STOPPED"  # a queued one ends at its turn
    assert client.clean_staging(stack, req) > 0
