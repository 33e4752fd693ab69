"""The batch job's pure parts: locations, the output key of each input, the plan of a listing,
and the report's counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.errors import Img2ImgError
from jobs.batch.plan import Location, check_locations, output_key, output_name, parse_location, plan
from jobs.batch.spec import BatchSpec, check_options
from jobs.batch.summary import manifest_json, summarise


@pytest.mark.parametrize("text, want", [
    ("s3://b/scans/", Location("b", "scans/")),
    ("s3://b", Location("b", "")),
    ("s3://b/", Location("b", "")),
    ("s3://b/one.png", Location("b", "one.png")),
    ("photos", Location(path=Path("photos"))),
    ("./a/b.png", Location(path=Path("a/b.png"))),
])
def test_locations_parse(text, want):
    assert parse_location(text) == want


@pytest.mark.parametrize("text", ["s3://", "s3:///prefix/", "s3://b//x/", "s3://b/a//c"])
def test_malformed_s3_locations_are_refused(text):
    with pytest.raises(Img2ImgError, match="not s3://BUCKET/PREFIX/"):
        parse_location(text)


@pytest.mark.parametrize("rel, fmt, want", [
    ("a.png", "png", ("a.png", "png")),
    ("x/b.JPG", "png", ("x/b.png", "png")),
    ("x/b.JPG", "same", ("x/b.JPG", "jpg")),
    ("c.webp", "same", ("c.webp", "webp")),
    ("d.tif", "same", ("d.tif", "tif")),
    ("e.bmp", "same", ("e.png", "png")),  # not writable as itself: PNG
    ("noext", "png", ("noext.png", "png")),
    ("dots.in.name.gif", "png", ("dots.in.name.png", "png")),
])
def test_output_names_keep_the_path_and_pick_the_format(rel, fmt, want):
    assert output_name(rel, fmt) == want


@pytest.mark.parametrize("key, src, dst, fmt, want", [
    ("scans/a/b.jpg", "scans/", "out/", "png", ("out/a/b.png", "png")),
    ("scans/a/b.jpg", "", "out/", "png", ("out/scans/a/b.png", "png")),  # the whole bucket
    ("scans/a/b.jpg", "scans/a/b.jpg", "out/", "png", ("out/b.png", "png")),  # one object into a folder
    ("scans/a/b.jpg", "scans/a/b.jpg", "out/c.png", "png", ("out/c.png", "png")),  # one object to one key
    ("scans/a/b.jpg", "scans/a/b.jpg", "out/c.webp", "same", ("out/c.webp", "webp")),
])
def test_output_keys_keep_relative_paths(key, src, dst, fmt, want):
    assert output_key(key, Location("b", src), Location("b", dst), fmt) == want


@pytest.mark.parametrize("src, dst, refused", [
    ("s3://b/in/", "s3://b/in/out/", True),
    ("s3://b/in/", "s3://b/in/", True),
    ("s3://b/", "s3://b/out/", True),  # the whole bucket holds the output
    ("s3://b/in/", "s3://b/out/", False),
    ("s3://b/in/", "s3://c/in/", False),  # another bucket
    ("s3://b/in/", "s3://b/inner/", False),  # a sibling that only shares letters
])
def test_an_output_inside_the_input_is_refused(src, dst, refused):
    check = lambda: check_locations(parse_location(src), parse_location(dst))  # noqa: E731
    if refused:
        with pytest.raises(Img2ImgError, match="inside the input"):
            check()
    else:
        check()


def test_the_plan_skips_markers_and_manifests_and_never_writes_one_output_twice():
    objects = [("in/b.png", 3), ("in/b.jpg", 2), ("in/sub/", 0), ("in/batch-manifest.json", 9), ("in/sub/c.tif", 5)]
    items = plan(objects, Location("b", "in/"), Location("b", "out/"), "png")
    assert [(i.key, i.out_key, i.reason) for i in items] == [
        ("in/b.jpg", "out/b.png", ""),
        ("in/b.png", "out/b.png", "same output out/b.png as in/b.jpg"),
        ("in/sub/c.tif", "out/sub/c.png", ""),
    ]


@pytest.mark.parametrize("dst, want", [
    ("out/", "out/batch-manifest.json"), ("", "batch-manifest.json"), ("out/x.png", "out/batch-manifest.json"),
    ("x.png", "batch-manifest.json"),
])
def test_the_manifest_sits_in_the_output_folder(dst, want):
    assert Location("b", dst).manifest_key == want


@pytest.mark.parametrize("fmt, workers, cpus, mp, message", [
    ("jpeg", 1, 1.0, 1.0, "--format"), ("png", 0, 1.0, 1.0, "--workers"), ("same", 1, 0.0, 1.0, "--cpus-per-worker"),
    ("png", 1, 1.0, 0.0, "--max-megapixels"),
])
def test_bad_options_are_named(fmt, workers, cpus, mp, message):
    with pytest.raises(Img2ImgError, match=message):
        check_options(fmt, workers, cpus, mp)


def test_the_report_counts_statuses_and_lists_failures_by_key():
    rows = [{"key": k, "size": 1, "out_key": "o/" + k, "status": s, "reason": r, "seconds": 0.5}
            for k, s, r in [("z", "failed", "not an image"), ("a", "written", ""), ("b", "skipped", "done"),
                            ("c", "written", ""), ("d", "failed", "truncated")]]
    summary = summarise(rows, 4.0)
    assert summary == {"files": 5, "written": 2, "skipped": 1, "failed": 2, "seconds": 4.0, "images_per_s": 0.5,
                       "failures": [{"key": "d", "reason": "truncated"}, {"key": "z", "reason": "not an image"}]}
    assert summarise(rows[:1], 0.0)["images_per_s"] == 0.0
    spec = BatchSpec("m", "1", "r", "b", "in/", "b", "out/")
    manifest = json.loads(manifest_json(spec, rows, summary))
    assert [f["key"] for f in manifest["files"]] == ["a", "b", "c", "d", "z"]
    assert manifest["summary"]["failed"] == 2 and manifest["spec"]["model"] == "m"
    assert BatchSpec.from_json(spec.to_json()) == spec


def test_the_before_after_grid_shows_every_decodable_pair_as_rgb():
    import io

    import numpy as np
    from PIL import Image

    from jobs.batch.summary import GRID_SIDE, before_after

    def png(img):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    rgb = png(Image.new("RGB", (600, 300), (200, 10, 10)))
    sixteen = png(Image.fromarray(np.full((20, 30), 40000, np.int32)).convert("I;16"))
    rgba = png(Image.new("RGBA", (10, 10), (0, 255, 0, 128)))
    grid = before_after([("a", rgb, rgb), ("b", sixteen, sixteen), ("c", b"broken", rgb), ("d", rgba, rgba)], 10**8)
    assert grid.mode == "RGB"
    assert GRID_SIDE * 2 < grid.width < GRID_SIDE * 2 + 40  # before | after, the wide one fitted into 256 px
    assert 128 + 20 + 10 < grid.height < 128 + 20 + 10 + 60  # three rows: the broken pair left out
    assert before_after([("c", b"broken", b"x")], 10**8) is None
