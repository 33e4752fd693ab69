"""A team's first hour with its own photos, on the real stack: a nested folder enhanced as it is
(through the endpoint and --local), rollback that rolls serving back, the notes and suggestions
ingest and lookups give, and the commands of docs/your-own-photos.md run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cluster.services import poll_until
from registry import models as registry
from tests.integration.conftest import champion_claim_text, endpoint_restored, new_version

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parents[2] / "docs" / "your-own-photos.md"


def nested_folder(root: Path) -> Path:
    """Photos in sub-folders, one basename in three places, a stray note, a hidden file."""
    from jobs.data.sources import list_sample

    photos = list_sample()
    for i, rel in enumerate(["IMG_0001.jpg", "trip/IMG_0001.jpg", "trip/day2/IMG_0002.png", "work/IMG_0001.jpg"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(photos[i].location).convert("RGB").resize((40, 30)).save(root / rel)
    (root / "notes.txt").write_text("shopping list")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


OUTPUTS = ["IMG_0001.enhanced.png", "trip/IMG_0001.enhanced.png", "trip/day2/IMG_0002.enhanced.png",
           "work/IMG_0001.enhanced.png"]


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("how", ["endpoint", "local"])
def test_a_nested_folder_is_enhanced_as_it_is(stack, cli, endpoint, demo_run, tmp_path, how):
    src = nested_folder(tmp_path / "myphotos")
    local = ["--local", "--model", f"{demo_run.model}@champion"] if how == "local" else []
    r = cli("enhance", src, "-o", tmp_path / "out", *local)
    assert r.exit_code == 0, r.output  # a stray note and a hidden file are no failure
    assert outputs(tmp_path / "out") == sorted(OUTPUTS)
    assert Image.open(tmp_path / "out" / "trip" / "day2" / "IMG_0002.enhanced.png").size == (40, 30)
    assert "notes.txt -> skipped: not an image file (suffix '.txt')" in r.output
    assert ".DS_Store -> skipped: hidden file" in r.output
    assert "Enhanced 4 image(s)" in r.output and "skipped 2 file(s)" in r.output
    # One image that is not what its name says: the exit code says an IMAGE failed.
    (src / "work" / "broken.jpg").write_bytes(b"not a jpeg")
    r = cli("enhance", src, "-o", tmp_path / "out2", *local)
    assert r.exit_code == 1 and "1 of 5 image(s) failed; skipped 2 file(s)" in r.output, r.output
    assert outputs(tmp_path / "out2") == sorted(OUTPUTS)  # the others were written


def test_local_refuses_a_large_photo_from_its_header_before_loading_the_model(stack, cli, demo_run, tmp_path,
                                                                               monkeypatch):
    import serving.local

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for an image that was refused")

    monkeypatch.setattr(serving.local, "load", no_load)
    Image.new("RGB", (6000, 4000)).save(tmp_path / "camera.jpg")
    r = cli("enhance", tmp_path / "camera.jpg", "--local", "--model", f"{demo_run.model}@champion",
            "--max-megapixels", "16", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert ("image is 6000x4000 = 24.0 MP, over the 16.0 MP limit; raise it with: img2img enhance --local "
            f"--model {demo_run.model}@champion --max-megapixels 24") in r.output


def served(stack) -> str:
    return httpx.get(stack.serve_url + "/model", timeout=30).json()["version"]


def test_rollback_rolls_serving_back(stack, cli, endpoint, demo_run):
    model = demo_run.model
    champion = registry.alias_version(stack, model, "champion")
    key = f"eval.{demo_run.dataset}.psnr"
    best = float(MlflowClient(stack.mlflow_uri).get_model_version(model, champion).tags[key])
    newer = new_version(stack, model, {key: f"{best - 1:.4f}"})
    assert cli("models", "promote", model, newer, "--force").exit_code == 0
    assert cli("serve", "reload", "--model", f"{model}@champion").exit_code == 0
    assert served(stack) == newer
    # The endpoint serves this model: rollback swaps it back, and says so. It holds the champion
    # claim until the endpoint serves it: a second rollback meanwhile is refused, so its reload can
    # never land before this one's and leave the endpoint serving a version that is not the champion.
    first = subprocess.Popen([sys.executable, "-m", "img2img_cli", "models", "rollback", model], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    assert poll_until(lambda: b"reloading" in champion_claim_text(stack, model)
                      and registry.alias_version(stack, model, "champion") == champion, 120, interval_s=0.1)
    r = cli("models", "rollback", model)
    assert r.exit_code == 1 and "(rolling back and reloading the endpoint); run this again once it has finished, by" \
        in " ".join(r.output.split()), r.output
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert f"The endpoint now serves {model} v{champion} (was v{newer}" in out
    assert served(stack) == champion and champion_claim_text(stack, model) == b""
    # --no-reload moves the alias only, says so, and `serve status` then warns.
    assert cli("models", "promote", model, newer, "--force").exit_code == 0
    assert cli("serve", "reload", "--model", f"{model}@champion").exit_code == 0
    r = cli("models", "rollback", model, "--no-reload")
    assert r.exit_code == 0 and "The endpoint was not reloaded (--no-reload)" in r.output
    assert served(stack) == newer
    r = cli("serve", "status")
    assert r.exit_code == 0
    assert (f"{model} v{newer} is no longer the champion (champion: v{champion}); swap it in with: "
            f"img2img serve reload --model {model}@champion") in r.output
    status = cli("serve", "status", "--json")
    assert '"serves_champion": false' in status.output and f'"champion_version": "{champion}"' in status.output
    assert cli("serve", "reload", "--model", f"{model}@champion").exit_code == 0
    assert served(stack) == champion and "no longer the champion" not in cli("serve", "status").output


def test_ingest_notes_small_and_flat_images_and_lookups_suggest_names(stack, cli, demo_run, tmp_path):
    root = nested_folder(tmp_path / "mine")
    Image.new("RGB", (20, 20), "red").save(root / "icon.png")  # smaller than the crop
    Image.new("RGB", (200, 200), (90, 140, 200)).save(root / "sky.png")  # flat: blur changes nothing
    r = cli("data", "ingest", root, "--name", "first-hour-notes", "--size", "24", "--crops", "2")
    assert r.exit_code == 0, r.output
    assert "1 source image(s) were smaller than the 24 px crop and were upscaled to it" in r.output
    assert "icon.png" in r.output
    flat = re.search(r"(\d+) of (\d+) pairs are flat: the input equals the target", r.output)
    assert flat and int(flat[1]) >= 4, r.output  # icon's and sky's crops, at least
    r = cli("data", "show", "first-hour-note")
    assert r.exit_code == 1 and "did you mean 'first-hour-notes'?" in r.output
    typo = demo_run.model[:-1]
    for args in (["models", "rollback", typo], ["serve", "reload", "--model", f"{typo}@champion"],
                 ["models", "export", f"{typo}@champion"]):
        r = cli(*args)
        assert r.exit_code == 1 and f"no registered model {typo!r}; did you mean {demo_run.model!r}?" in r.output


def runnable_commands(doc: Path) -> list[str]:
    """The lines of the fenced bash blocks marked `<!-- runnable -->` in `doc`."""
    text = doc.read_text()
    blocks = re.findall(r"<!-- runnable -->\s*```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture
def restore_endpoint(stack):
    """Whatever the endpoint serves before the test, it serves again after (other tests use it)."""
    with endpoint_restored(stack):
        yield


def test_your_own_photos_walkthrough_runs_as_written(stack, cli, tmp_path, monkeypatch, restore_endpoint):
    """Every runnable command of docs/your-own-photos.md, in order, from a folder holding a small
    `myphotos/` (sample photos in sub-folders, a stray note). Only the training budget is cut
    (seconds, not minutes): everything else runs exactly as the page shows it."""
    from jobs.data.sources import list_sample

    commands = runnable_commands(DOC)
    assert len(commands) >= 8 and all(c.startswith("img2img ") for c in commands)
    monkeypatch.chdir(tmp_path)
    for i, photo in enumerate(list_sample()[:10]):
        dest = Path("myphotos") / ("trip" if i % 2 else "home") / f"IMG_{i % 5:04d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo.location).convert("RGB").resize((160, 120)).save(dest)
    Path("myphotos/notes.txt").write_text("not a photo")
    for command in commands:
        command = re.sub(r"--time-budget \d+", "--time-budget 45", command)
        r = cli(*shlex.split(command)[1:])
        assert r.exit_code == 0, f"{command}\n{r.output}"
    assert sorted(p.relative_to("enhanced").as_posix() for p in Path("enhanced").rglob("*.png")) == sorted(
        f"{'trip' if i % 2 else 'home'}/IMG_{i % 5:04d}.enhanced.png" for i in range(10))
    assert len(list(Path("enhanced-local").rglob("*.png"))) == 10
