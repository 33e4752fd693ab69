"""Ingest inputs a user can get wrong, refused with one line naming the flag or spec and the
allowed range; and 16-bit aligned pairs kept on one scale (no object store needed)."""

import io

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cluster.errors import Img2ImgError
from jobs.data.plan import IngestOptions, Row
from jobs.data.sources import SourceFile
from jobs.data.worker import _png, _row_images, common_scale
from translator import degrade


@pytest.mark.parametrize("spec, expected", [
    ("gaussian:0", "above 0 and at most 20"), ("gaussian:1e6", "above 0 and at most 20"),
    ("gaussian:20.5", "above 0 and at most 20"), ("gaussian:-1", "above 0"), ("gaussian:inf", "at most 20"),
    ("gaussian:nan", "at most 20"), ("gaussian:1_0", "at most 20"), ("gaussian:", "at most 20"),
    ("random_gaussian:0-3", "LO in random_gaussian"), ("random_gaussian:1-25", "HI in random_gaussian"),
    ("random_gaussian:3-1", "backwards"), ("random_gaussian:2", "needs LO-HI"), ("random_gaussian:1-2-3", "needs LO-HI"),
    ("resize:0.5", "above 1 and at most 32"), ("resize:1", "above 1 and at most 32"), ("resize:100", "at most 32"),
    ("noise:0", "above 0 and at most 255"), ("noise:300", "at most 255"),
    ("jpeg:50.7", "whole number from 1 to 100"), ("jpeg:0", "from 1 to 100"), ("jpeg:101", "from 1 to 100"),
    ("jpeg:5e1", "whole number"),
    ("gray:3", "gray takes no argument"),
    ("edges:0", "above 0 and at most 20"), ("edges:50", "at most 20"), ("edges:", "at most 20"),
    ("holes:0", "above 0 and below 1"), ("holes:1", "below 1"), ("holes:1.5", "below 1"),
    ("scratches:0", "from 1 to 1000"), ("scratches:2.5", "whole number"), ("scratches:5000", "from 1 to 1000"),
    ("mix(gaussian:2,resize:0.5)", "'resize:0.5'"), ("chain(gray,jpeg:50.7)", "'jpeg:50.7'"),
    ("mix()", "at least one"), ("mix(gaussian:1", "unbalanced"), ("blur:2", "unknown degradation"),
])
def test_every_bad_spec_value_names_the_spec_and_its_range(spec, expected):
    with pytest.raises(degrade.DegradationError) as err:
        degrade.parse(spec)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    if "(" not in spec:
        assert repr(spec) in message, message  # names the spec as written


@pytest.mark.parametrize("spec", ["gaussian:20", "gaussian:0.1", "random_gaussian:0.5-0.5", "random_gaussian:1-20",
                                  "resize:1.5", "resize:32", "noise:255", "jpeg:1", "jpeg:100", "gray", "edges",
                                  "edges:20", "holes:0.99", "scratches:1", "scratches:1000",
                                  "mix(gaussian:1.5,resize:4)", "chain(gray,scratches:8)"])
def test_edge_of_range_specs_are_accepted(spec):
    degrade.parse(spec)


def test_largest_gaussian_stays_a_small_kernel():
    assert len(degrade.gaussian_kernel(degrade.MAX_SIGMA)) == 161
    out = degrade.apply(f"gaussian:{degrade.MAX_SIGMA:g}", np.random.default_rng(0).random((16, 16, 3)), 0)
    assert out.shape == (16, 16, 3)


@pytest.mark.parametrize("opts, message", [
    (dict(kind="aligned", degrade="gaussian:2"), "--degrade applies to --kind synth only"),
    (dict(kind="unaligned", degrade="gaussian:2"), "--degrade applies to --kind synth only"),
    (dict(kind="aligned", copies=3), "--copies applies to --kind synth only"),
    (dict(kind="synth", direction="BtoA"), "--direction applies to --kind aligned only"),
    (dict(size=None, crops=8), "--crops 8 cuts random SIZE x SIZE crops, so it needs a --size above 0"),
    (dict(size=None, crops=1), "needs a --size above 0"),
    (dict(degrade="jpeg:50.7"), "whole number from 1 to 100"),
])
def test_options_that_would_be_ignored_or_meaningless_are_refused(opts, message):
    with pytest.raises((Img2ImgError, degrade.DegradationError), match=message.replace("+", r"\+")):
        IngestOptions(name="d", **opts).validate()


def test_defaults_still_validate():
    IngestOptions(name="d").validate()  # synth with gaussian:1.5
    IngestOptions(name="d", kind="aligned").validate()  # no degradation at all
    IngestOptions(name="d", kind="unaligned", size=None).validate()
    assert IngestOptions(name="d").degrade == "gaussian:1.5" and IngestOptions(name="d", kind="aligned").degrade is None


@pytest.mark.parametrize("args, message", [
    (["--kind", "aligned", "--degrade", "gaussian:2"], "--degrade applies to --kind synth only"),
    (["--size", "0", "--crops", "8"], "needs a --size above 0"),
    (["--degrade", "resize:0.5"], "above 1 and at most 32"),
])
def test_cli_refuses_before_touching_the_store(monkeypatch, tmp_path, args, message):
    from img2img_cli.app import app

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("IMG2IMG_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a store call would fail
    r = CliRunner().invoke(app, ["data", "ingest", str(tmp_path), "--name", "d", *args], catch_exceptions=False)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and message in r.output, r.output
    assert r.output.count("\n") == 1


def _png16(path, arr):
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))[1].tobytes())


def test_16bit_aligned_pair_shares_one_scale(tmp_path):
    """A peaks at 3000 (12-bit scale, /4095), B at 5000 (13-bit, /8191): the same stored value
    1000 must come out at the same level on both sides."""
    a = np.full((32, 32, 3), 1000, np.uint16)
    a[0, 0] = 3000
    b = np.full((32, 32, 3), 1000, np.uint16)
    b[0, 0] = 5000
    _png16(tmp_path / "a.png", a)
    _png16(tmp_path / "b.png", b)
    row = Row("A/x.png#0#0", (SourceFile("A/x.png", str(tmp_path / "a.png")), SourceFile("B/x.png", str(tmp_path / "b.png"))))
    pair = _row_images(row, IngestOptions(name="t", kind="aligned", size=None), None, {})
    stored = [cv2.imdecode(np.frombuffer(_png(p), np.uint8), cv2.IMREAD_UNCHANGED) for p in pair]
    assert stored[0].dtype == np.uint16
    assert abs(int(stored[0][5, 5, 0]) - int(stored[1][5, 5, 0])) <= 1  # same level both sides
    assert abs(stored[0][5, 5, 0] / 65535 - 1000 / 8191) < 1e-4  # on the larger (8191) scale
    assert abs(stored[1][0, 0, 0] / 65535 - 5000 / 8191) < 1e-4


def test_common_scale_leaves_equal_scales_and_8bit_alone():
    x = np.full((2, 2, 3), 0.5, np.float32)
    assert common_scale(x, 4095, x, 4095)[0] is x
    assert common_scale(x, None, x, 4095)[1] is x
    lo, hi = common_scale(x, 4095, x, 65535)
    assert np.allclose(lo, 0.5 * 4095 / 65535) and hi is not x and np.allclose(hi, 0.5)


def test_png_roundtrip_of_scaled_side_is_16bit():
    from jobs.data.decode import _decode

    lo, _ = common_scale(np.full((4, 4, 3), 0.25, np.float32), 4095, np.zeros((4, 4, 3), np.float32), 8191)
    assert abs(_decode(_png(lo)).mean() - 0.25 * 4095 / 8191) < 1e-4
    assert io.BytesIO(_png(lo)).getvalue()[24] == 16


def test_16bit_synth_pair_decodes_on_one_scale(tmp_path):
    """A blurred 16-bit input peaks lower than its clean target; training must read both on the
    stored 0-65535 scale, not each normalised by its own peak (which would brighten one side)."""
    from jobs.data.decode import _decode

    img = np.full((32, 32, 3), 20000, np.uint16)
    img[16, 16] = 40000  # one bright pixel: the blur pulls the peak below 32767
    _png16(tmp_path / "x.png", img)
    row = Row("x.png#0#0", (SourceFile("x.png", str(tmp_path / "x.png")),))
    degraded, clean = (_decode(_png(p)) for p in _row_images(row, IngestOptions(name="t", degrade="gaussian:2",
                                                                                   size=None), None, {}))
    assert degraded.max() < 32767 / 65535 < clean.max()
    assert abs(float(degraded[0, 0, 0]) - float(clean[0, 0, 0])) < 1e-3  # the flat area: same level both sides


def test_manifest_identity_ignores_the_shard_name_version():
    """An --overwrite with the same content writes new shard names; the dataset identity (logged
    with training runs) must not change for that, and must change when the content does."""
    from registry.manifest import Manifest, Shard

    def manifest(path, sha="ab"):
        return Manifest("d", "paired", "synth", "t", "s", 32, None, 0, splits={"train": [Shard(path, 1, sha, 10)]})

    plain = manifest("train/shard-00000.parquet").sha256
    assert manifest("train/shard-00000.0123456789ab.parquet").sha256 == plain
    assert manifest("train/shard-00001.0123456789ab.parquet").sha256 != plain
    assert manifest("train/shard-00000.0123456789ab.parquet", sha="cd").sha256 != plain


def test_manifest_min_side_is_the_smallest_training_image_or_unknown():
    """What the training-crop check holds a kept-size (`--size 0`) dataset to: the shortest side
    of its smallest training image; unknown (None) when any shard predates the field."""
    from registry.manifest import Manifest, Shard

    def manifest(*sides, val=None):
        train = [Shard(f"train/shard-{i:05d}.parquet", 1, "ab", 10, None, s) for i, s in enumerate(sides)]
        train.append(Shard("train/shard-99999.parquet", 0, "ab", 10))  # an empty shard says nothing
        return Manifest("d", "paired", "synth", "t", "s", None, None, 0,
                        splits={"train": train, "val": [Shard("val/shard-00000.parquet", 1, "ab", 10, None, val)]})

    assert manifest(96, 48, 72, val=8).min_side("train") == 48  # the val split's tiny image does not count
    assert manifest(96, None).min_side("train") is None
    assert manifest(96).min_side("test") is None
    restored = Manifest.from_json(manifest(64, 80).to_json())
    assert restored.min_side() == 64


def test_an_ingest_of_other_files_under_the_same_names_is_another_ingest(tmp_path):
    """A re-run over the same, unchanged files has the same fingerprint (a killed run resumes its
    shards); another folder, or an edited file, under the same names does not, so two such ingests
    of one dataset at once never write the same shards and a resume never reuses another's."""
    import os

    from jobs.data.ingest import _fingerprint
    from jobs.data.sources import scan_source

    def folder(name: str, value: int):
        for i in range(3):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"img{i}.png").write_bytes(_png(np.full((8, 8, 3), value + i, np.uint8)))
        return str(tmp_path / name)

    opts = IngestOptions(name="d", degrade="gaussian:1")
    a, b = folder("a", 10), folder("b", 20)
    fa = _fingerprint(scan_source(a, None)[0], opts)
    assert _fingerprint(scan_source(a, None)[0], opts) == fa
    assert _fingerprint(scan_source(b, None)[0], opts) != fa
    edited = tmp_path / "a" / "img1.png"
    edited.write_bytes(_png(np.full((8, 8, 3), 99, np.uint8)))
    os.utime(edited, ns=(1, 1))
    assert _fingerprint(scan_source(a, None)[0], opts) != fa
