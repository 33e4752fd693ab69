"""What a person at an 80-column terminal and a script reading a pipe get from the CLI, and the
mistakes refused before any service is contacted (no stack needed for these)."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from cluster import cli_utils
from cluster.errors import Img2ImgError
from img2img_cli.app import app

IDS = ["raysubmit_aBcDeFgHiJkLmNoPqRsT", "photos-with-a-rather-long-dataset-name",
       "0123456789abcdef0123456789abcdef", "http://127.0.0.1:18265/enhance"]
ROWS = [[IDS[0], "SUCCEEDED", "nafnet", IDS[1], "2026-11-29 14:00:00", IDS[2], IDS[3]],
        ["raysubmit_short", "FAILED", "pix2pix", "blur", "2026-11-29 14:05:00", "f" * 32, "-"]]
COLUMNS = ["id", "status", "variant", "dataset", "started", "run", "url"]


def render(monkeypatch, terminal: bool, width: int = 80) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(cli_utils, "console", Console(file=buf, force_terminal=terminal, width=width,
                                                      color_system=None))
    cli_utils.print_table("training jobs", COLUMNS, ROWS, ids=["id", "dataset", "run", "url"])
    return buf.getvalue()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal-80-columns", "pipe"])
def test_identifiers_are_never_cut(monkeypatch, terminal):
    out = render(monkeypatch, terminal)
    lines = out.splitlines()
    for ident in IDS:
        assert any(ident in line for line in lines), f"{ident} was cut:\n{out}"
    if not terminal:  # in a pipe every row is one line, so grep finds whole rows
        row = next(line for line in lines if IDS[0] in line)
        assert all(x in row for x in (IDS[1], IDS[2], IDS[3], "SUCCEEDED"))


def test_terminal_table_fits_80_columns_when_the_ids_do(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(cli_utils, "console", Console(file=buf, force_terminal=True, width=80, color_system=None))
    cli_utils.print_table("datasets", ["name", "kind", "rows", "size", "degradation", "created"],
                          [["photos", "paired", "train 120, val 12", "3 MB", "mix(gaussian:1.5,resize:4)",
                            "2026-11-29T14:59:53+00:00"]], ids=["name", "kind", "degradation"])
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("mix(gaussian:1.5,resize:4)" in line for line in lines)


def test_messages_are_not_broken_by_inserted_newlines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    cmd = "img2img serve reload --model a-model-with-a-long-registered-name@champion --and-more-words"
    buf = io.StringIO()
    console = Console(file=buf, soft_wrap=True)
    console.size = (None, None)
    console.print(f"Swap it into the running endpoint with: {cmd}")
    assert cmd in buf.getvalue().splitlines()[0]


def test_print_json_is_plain_parsable_json(capsys):
    cli_utils.print_json(cli_utils.records(COLUMNS, ROWS))
    data = json.loads(capsys.readouterr().out)
    assert data[0]["id"] == IDS[0] and data[1]["variant"] == "pix2pix" and list(data[0]) == COLUMNS


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [["data", "ingest"], ["train"], ["enhance"], ["models", "ls"],
                                     ["jobs", "ls"], ["stack", "status"]])
def test_help_shows_flags_without_type_tags(cli, command):
    r = cli(*command, "--help")
    assert r.exit_code == 0
    assert "<bool>" not in r.output and "--help" in r.output


@pytest.mark.parametrize("command", [["data", "ls"], ["data", "show"], ["jobs", "ls"], ["jobs", "status"],
                                     ["models", "ls"], ["serve", "status"], ["stack", "status"]])
def test_every_listing_command_has_json(cli, command):
    assert "--json" in cli(*command, "--help").output


@pytest.mark.parametrize("env", [{"IMG2IMG_S3_SECRET_KEY": "wrong"}, {"AWS_SECRET_ACCESS_KEY": "wrong"},
                                 {"IMG2IMG_S3_ACCESS_KEY": "someone"}, {"AWS_ACCESS_KEY_ID": "someone"}])
def test_half_set_credentials_are_a_configuration_error(cli, monkeypatch, tmp_path, env):
    for key in ("IMG2IMG_S3_ACCESS_KEY", "IMG2IMG_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("IMG2IMG_STATE_DIR", str(tmp_path))
    (tmp_path / "credentials.json").write_text(json.dumps({"access_key": "a", "secret_key": "b"}))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = cli("data", "ls")
    assert r.exit_code == 1
    assert r.output.startswith("Error: configuration error: the S3 ") and r.output.count("\n") == 1
    assert "wrong" not in r.output and "someone" not in r.output  # never echo a secret
    missing = "access" if "SECRET" in next(iter(env)) else "secret"
    assert f"the {missing} key is not" in r.output


def test_both_keys_set_is_fine():
    from cluster.settings import get_settings

    assert get_settings(s3_access_key="a", s3_secret_key="b").s3_keys() == ("a", "b")
    with pytest.raises(Img2ImgError, match="configuration error"):
        get_settings(s3_access_key="a")


def test_output_paths_are_checked_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", "127.0.0.1:9")  # nothing listens: any S3 call would fail
    monkeypatch.chdir(tmp_path)
    r = cli("data", "show", "photos", "--preview", "nodir/p.png")
    assert r.exit_code == 1 and r.output.startswith("Error: --preview: folder nodir does not exist")
    assert "Traceback" not in r.output
    r = cli("data", "show", "photos", "--preview", tmp_path)
    assert r.exit_code == 1 and "is a folder" in r.output
    r = cli("data", "show", "photos", "--preview", "p.jpg")
    assert r.exit_code == 1 and "must end in .png" in r.output
    (tmp_path / "afile").write_text("x")
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    r = cli("enhance", img, "-o", tmp_path / "afile" / "out")
    assert r.exit_code == 1 and "is a file" in r.output


def test_enhance_input_mistakes_are_named_once_before_progress(cli, tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    cases = [((tmp_path / "notes",), "no image to enhance (looked for .bmp, "),
             ((tmp_path / "nope.png",), "no such file"),
             ((img, img, "--format", "gif"), "unsupported --format 'gif': use png, jpeg, webp or tiff"),
             ((img, "--local"), "--local needs --model"),
             ((img, "--model", "photos"), "--model goes with --local"),
             ((img, "--max-megapixels", "100"), "--max-megapixels goes with --local; the endpoint's limit is set "
                                                "by: img2img serve deploy --model NAME@champion --max-megapixels N"),
             ((img, "--local", "--model", "m", "--max-megapixels", "0"), "--max-megapixels must be a finite number > 0")]
    for args, message in cases:
        r = cli("enhance", *args, "--url", "http://127.0.0.1:9")
        assert r.exit_code == 1, r.output
        assert r.output.startswith("Error: ") and message in r.output, r.output
        assert r.output.count("\n") == 1 and "━" not in r.output  # one line, no progress bar drawn
    more = [(("--url", "notaurl"), "--url must be an http(s) URL such as http://127.0.0.1:8000, got 'notaurl'"),
            (("--url", "http://127.0.0.1:9", "-o", "/proc/img2img-out"), "cannot create the output folder /proc/img2img-out"),
            (("--url", "http://127.0.0.1:9", "--timeout", "nan"), "--timeout must be a finite number of seconds > 0"),
            (("--url", "http://127.0.0.1:9", "--parallel", "0"), "--parallel and --threads must be at least 1")]
    for args, message in more:  # the URL is never tried: 6 retries of "notaurl" took 11 s
        r = cli("enhance", img, *args)
        assert r.exit_code == 1 and r.output.startswith("Error: ") and message in r.output, r.output
        assert r.output.count("\n") == 1 and "━" not in r.output


def test_bad_dataset_name_states_the_rule(cli, tmp_path):
    from jobs.data.ingest import IngestOptions

    for bad in ("a/b", ".hidden", "", "x" * 65, "spa ce"):
        with pytest.raises(Img2ImgError, match="use 1-64 letters, digits"):
            IngestOptions(name=bad).validate()
    IngestOptions(name="horse2zebra_v1.2-small").validate()


def test_grid_labels_every_column():
    from translator import images

    a, b = Image.new("RGB", (20, 20), "red"), Image.new("RGB", (20, 20), "blue")
    plain = images.grid([[a, b]])
    labelled = images.grid([[a, b], [a, b]], labels=["input (A)", "target (B)"])
    arr = np.asarray(labelled)
    header = arr[: arr.shape[0] - 2 * (20 + 4) - 4]
    assert header.shape[0] > 4 and (header < 100).all(axis=-1).any()  # dark caption pixels above the images
    assert labelled.width > plain.width  # columns widen so captions never overlap


def test_folder_output_check_walks_up_to_an_existing_parent(tmp_path):
    cli_utils.check_output_dir(tmp_path / "new" / "deeper", "-o")  # created later by the command
    with pytest.raises(Img2ImgError, match="is a file"):
        (tmp_path / "f").write_text("x")
        cli_utils.check_output_dir(tmp_path / "f", "-o")


@pytest.mark.parametrize("args, message", [(["--workers", "0"], "--workers must be at least 1"),
                                           (["--precision", "fp8"], "--precision must be auto, fp32 or bf16"),
                                           (["--lr", "inf"], "lr must be a finite number, got inf"),
                                           (["--set", "width=0"], "nafnet cannot be built with these settings"),
                                           (["--model-name", "bad/name"], "cannot name a registered model")])
def test_a_bad_training_option_is_named_even_while_the_stack_is_down(cli, monkeypatch, tmp_path, args, message):
    """Options need no service: they are checked before Ray, S3 or MLflow is contacted, so the
    user fixes the command first instead of being told to start a stack."""
    from tests.conftest import stack_env

    for key, value in stack_env(tmp_path / "state").items():  # free ports: nothing listens there
        monkeypatch.setenv(key, value)
    r = cli("train", "--dataset", "photos", *args)
    assert r.exit_code == 1 and message in r.output and "cannot reach" not in r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output


def test_a_bucket_name_s3_refuses_is_one_line_before_any_request():
    from cluster.settings import get_settings
    from cluster.storage import Storage

    settings = get_settings(s3_access_key="k", s3_secret_key="s")
    with pytest.raises(Img2ImgError, match="'bad bucket' is not a valid S3 bucket name"):
        Storage(settings, bucket="bad bucket")  # the SDK raised a bare ValueError on first use
    assert Storage(settings, bucket="img2img-data").bucket == "img2img-data"



def _models_ls(monkeypatch, terminal: bool, width: int, wide: bool = True) -> str:
    from img2img_cli.commands.models import LS_IDS, ls_table
    from registry.models import VersionInfo
    from translator.metrics import PSNR_DEFINITION

    tags = {"variant": "nafnet", "dataset": "my-photos", "val_psnr": "26.2200", "val_ssim": "0.9320",
            "val_gain_db": "4.3200", "psnr_def": PSNR_DEFINITION}
    versions = [VersionInfo("my-photos", "1", tags, ["champion"], "0123456789abcdef" * 2, "2026-12-05 10:45"),
                VersionInfo("my-photos", "2", {**tags, "val_gain_db": "-0.4500", "worse_than_input": "true"}, [],
                            "fedcba9876543210" * 2, "2026-12-05 11:45")]
    columns, rows = ls_table(versions, {}, wide)
    buf = io.StringIO()
    monkeypatch.setattr(cli_utils, "console", Console(file=buf, force_terminal=terminal, width=width,
                                                      color_system=None))
    cli_utils.print_table("registered models", columns, rows, ids=[c for c in LS_IDS if c in columns])
    return buf.getvalue()


@pytest.mark.parametrize("terminal,width", [(True, 60), (True, 80), (False, 80)], ids=["60", "80", "pipe"])
def test_models_ls_shows_only_columns_that_apply_and_never_splits_a_word(monkeypatch, terminal, width):
    out = _models_ls(monkeypatch, terminal, width)
    assert "cycle PSNR" not in out and "eval PSNR" not in out and "parent" not in out  # paired, no eval, no parent
    assert "WORSE THAN INPUT" in out or "WORSE" in out  # v2's current-definition gain is negative
    for word in ("26.22", "+4.32", "-0.45", "2026-12-05", "01234567", "champion", "my-photos"):
        assert word in out, f"{word} was split:\n{out}"
    if not terminal:  # a pipe: one line per version
        assert any("2026-12-05 11:45" in line and "fedcba98" in line for line in out.splitlines())


def test_models_ls_fits_80_columns_and_names_versions_as_references(monkeypatch):
    """Without `--wide` the table fits an 80-column terminal and names each version as the
    NAME/VERSION other commands take; run ids and times are `--wide`'s (a pipe keeps one line
    per row at any width, the test above)."""
    out = _models_ls(monkeypatch, True, 80, wide=False)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "my-photos/1" in out and "my-photos/2" in out and "+4.32" in out and "champion" in out
    assert "01234567" not in out and "2026-12-05" not in out
