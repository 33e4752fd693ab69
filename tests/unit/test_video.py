"""Videos: recognised by their container (and refused by the endpoint's codec with a pointer to
`img2img batch`), planned as videos by the batch job, and written back frame for frame at the
input's rate, with its audio and metadata (translator.video, PyAV)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.batch.plan import VIDEO, Location, plan
from tests.videos import KINDS, describe, synthetic_video
from translator import codec, video


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("suffix", sorted(KINDS))
def test_every_video_container_is_recognised_and_refused_by_the_endpoint_codec(tmp_path, suffix):
    body = synthetic_video(tmp_path / f"v{suffix}", seconds=1).read_bytes()
    assert video.is_video(body[:200])
    with pytest.raises(codec.RequestError) as e:
        codec.decode(body, 10_000_000)
    assert e.value.status == 415 and "img2img batch" in e.value.message


@pytest.mark.parametrize("head", [
    _image("PNG"), _image("JPEG"), _image("WEBP"), _image("TIFF"), _image("GIF"), _image("BMP"),
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00",
    b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", b"", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
])
def test_images_are_not_taken_for_videos(head):
    assert not video.is_video(head[:200])


@pytest.mark.parametrize("suffix", sorted(KINDS))
def test_frames_go_back_in_order_at_the_input_rate_with_audio_and_metadata(tmp_path, suffix):
    src = synthetic_video(tmp_path / f"in{suffix}")
    info = video.probe(src)
    assert len(info.pts) == 20 and info.rate == 10 and info.audio == 1
    runs = video.chunks(info.pts, 6)
    assert [n for *_, n in runs] == [6, 6, 6, 2]
    frames = [f for first, last, _ in runs for f in video.read_frames(src, first, last)]
    assert [p for p, _ in frames] == info.pts
    dst = tmp_path / f"out{suffix}"
    twice = ((p, np.repeat(np.repeat(rgb, 2, 0), 2, 1)) for p, rgb in frames)
    assert video.write(src, twice, dst) == 20
    got, want = describe(dst), describe(src)
    assert got == want | {"size": (96, 64)}


def test_a_file_that_is_not_a_video_is_refused_by_probe(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    with pytest.raises(video.VideoError, match="not a video"):
        video.probe(tmp_path / "x.mp4")


@pytest.mark.parametrize("dst, fmt, out_key, reason", [
    ("s3://b/out/", "png", "out/clips/m.MP4", ""),
    ("s3://b/out/", "same", "out/clips/m.MP4", ""),
    ("s3://b/m2.mkv", "png", "m2.mkv", ""),
    ("s3://b/m2.png", "png", "m2.png", "a video is written as a video"),
])
def test_a_video_keeps_its_container_in_the_plan(dst, fmt, out_key, reason):
    from jobs.batch.plan import parse_location

    src = Location("b", "in/clips/m.MP4") if not dst.endswith("/") else Location("b", "in/")
    (item,) = plan([(src.prefix if not src.is_folder else "in/clips/m.MP4", 10)], src, parse_location(dst), fmt)
    assert (item.out_key, item.fmt) == (out_key, VIDEO) and reason in item.reason and bool(reason) == bool(item.reason)


def test_the_dry_run_counts_a_local_video_as_its_frames_pixels(tmp_path):
    from cluster.settings import Settings
    from jobs.batch.estimate import megapixels
    from jobs.batch.spec import BatchSpec

    (tmp_path / "in").mkdir()
    synthetic_video(tmp_path / "in" / "m.mp4")  # 20 frames of 48 x 32
    Image.new("RGB", (100, 50)).save(tmp_path / "in" / "a.png")
    src, dst = Location("bkt", "batch/x/in/"), Location("bkt", "batch/x/out/")
    items = plan([("batch/x/in/m.mp4", 10), ("batch/x/in/a.png", 10)], src, dst, "png")
    spec = BatchSpec("m", "1", "r", "bkt", src.prefix, "bkt", dst.prefix)
    assert megapixels(Settings(), spec, items, tmp_path / "in") == (pytest.approx((20 * 48 * 32 + 5000) / 1e6), 2)
