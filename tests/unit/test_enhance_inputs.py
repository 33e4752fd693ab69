"""`img2img enhance` with folders and camera-sized photos: what is read, what is skipped, where
each output goes, and the pixel limit checked from the header (no stack, no model)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from cluster.errors import Img2ImgError
from serving.inputs import check_outputs, collect, output_path
from serving.local import too_large
from serving.options import DEFAULTS
from translator import codec
from translator.codec import over_pixel_limit


def photo_folder(root: Path) -> Path:
    """A folder as people have them: nested, one basename in two sub-folders, a stray note,
    a hidden file and a hidden folder."""
    for rel in ("IMG_0001.jpg", "trip/IMG_0001.jpg", "trip/day2/IMG_0002.PNG", "work/IMG_0001.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), "green").save(root / rel)
    (root / "notes.txt").write_text("not a photo")
    (root / ".DS_Store").write_bytes(b"x")
    (root / ".thumbs").mkdir()
    Image.new("RGB", (8, 6)).save(root / ".thumbs" / "t.jpg")
    return root


def test_a_folder_recurses_and_outputs_keep_relative_paths(tmp_path):
    root = photo_folder(tmp_path / "myphotos")
    got = collect([root], tmp_path / "out")
    assert [f.relative_to(root).as_posix() for f in got.files] == [
        "IMG_0001.jpg", "trip/IMG_0001.jpg", "trip/day2/IMG_0002.PNG", "work/IMG_0001.jpg"]
    assert got.root == root
    outs = [output_path(f, tmp_path / "out", "png", got.root).relative_to(tmp_path / "out").as_posix()
            for f in got.files]
    assert outs == ["IMG_0001.enhanced.png", "trip/IMG_0001.enhanced.png", "trip/day2/IMG_0002.enhanced.png",
                    "work/IMG_0001.enhanced.png"]
    check_outputs(got.files, tmp_path / "out", "png", got.root)  # duplicates in sub-folders do not collide
    reasons = {Path(s["file"]).name: s["reason"] for s in got.skipped}
    assert reasons == {"notes.txt": "not an image file (suffix '.txt')",
                       ".DS_Store": "hidden file (name starts with a dot)",
                       ".thumbs": "hidden folder (name starts with a dot)"}


@pytest.mark.parametrize("given, root, first_output", [
    (lambda r: [r], "myphotos", "IMG_0001.enhanced.png"),  # the folder as it is
    # a shell glob `myphotos/*`: sub-folders and files, each once
    (lambda r: sorted(r.iterdir()), "myphotos", "IMG_0001.enhanced.png"),
    # `$(find myphotos -type f)`: files from several depths keep their sub-folders
    (lambda r: sorted(p for p in r.rglob("*") if p.is_file()), "myphotos", "IMG_0001.enhanced.png"),
    (lambda r: [r / "trip", r / "work"], "myphotos", "trip/IMG_0001.enhanced.png"),  # two folders side by side
    (lambda r: [r / "trip" / "IMG_0001.jpg"], "myphotos/trip", "IMG_0001.enhanced.png"),  # one file: as before
])
def test_every_way_of_naming_a_folder_gives_distinct_outputs(tmp_path, given, root, first_output):
    folder = photo_folder(tmp_path / "myphotos")
    got = collect(given(folder), tmp_path / "out")
    assert got.root == tmp_path / root
    check_outputs(got.files, tmp_path / "out", "png", got.root)
    assert len({f.resolve() for f in got.files}) == len(got.files)
    assert output_path(got.files[0], tmp_path / "out", "png", got.root) == tmp_path / "out" / first_output


def test_outputs_inside_the_input_folder_are_not_read_again(tmp_path):
    root = photo_folder(tmp_path / "myphotos")
    (root / "sharp").mkdir()
    Image.new("RGB", (8, 6)).save(root / "sharp" / "IMG_0001.enhanced.png")  # an earlier run's output
    got = collect([root], root / "sharp")
    assert not any("sharp" in f.parts for f in got.files)
    assert {"file": f"{root / 'sharp'}/", "reason": "the output folder (-o) of this run"} in got.skipped


def test_no_image_at_all_is_one_error_naming_what_was_skipped(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(Img2ImgError, match=r"no image to enhance .*skipped 1: .*a.txt \(not an image file"):
        collect([tmp_path / "docs"])
    with pytest.raises(Img2ImgError, match="no such file or folder: .*nope"):
        collect([tmp_path / "nope"])


def test_same_stem_in_one_folder_is_refused_before_anything_is_sent(tmp_path):
    for name in ("x.jpg", "x.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    got = collect([tmp_path])
    with pytest.raises(Img2ImgError, match="would both be written to .*x.enhanced.png; rename one"):
        check_outputs(got.files, tmp_path / "out", "png", got.root)


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(6000, 4000), (8160, 6120), (9248, 6936), (9504, 6336)])
def test_the_default_limit_takes_phone_and_camera_photos(size):
    """24 MP camera, 50 MP phone, 64 MP phone sensor, 61 MP full-frame camera."""
    assert over_pixel_limit(*size, DEFAULTS.max_pixels, "x") is None


def test_the_413_says_how_to_raise_the_limit():
    with pytest.raises(codec.RequestError) as e:
        codec.decode(jpeg(6000, 4000), 16_000_000)
    assert e.value.status == 413
    assert e.value.message == ("image is 6000x4000 = 24.0 MP, over the 16.0 MP limit; raise it with: "
                               "img2img serve deploy --model NAME@champion --max-megapixels 24")
    # A limit above Pillow's own bomb guard (89 MP) is the limit: 100 MP passes the header check.
    big = jpeg(10000, 10000)
    with pytest.raises(codec.RequestError) as e:
        codec.decode(big, 99_000_000)
    assert "over the 99.0 MP limit" in e.value.message and "--max-megapixels 100" in e.value.message


def test_local_sizes_are_read_from_headers_before_any_decode(tmp_path):
    (tmp_path / "big.jpg").write_bytes(jpeg(6000, 4000))
    (tmp_path / "small.jpg").write_bytes(jpeg(60, 40))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")  # left to the decoder's own 415
    refused = too_large(sorted(tmp_path.iterdir()), 16_000_000, "img2img enhance --local --model m")
    assert refused == {tmp_path / "big.jpg": "image is 6000x4000 = 24.0 MP, over the 16.0 MP limit; raise it "
                                             "with: img2img enhance --local --model m --max-megapixels 24"}


@pytest.mark.parametrize("name", ["clip.mp4", "clip.MOV", "clip.mkv", "clip.webm", "clip.avi", "clip.m4v"])
def test_a_video_named_to_enhance_is_left_out_with_a_pointer_to_batch(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00")
    with pytest.raises(Img2ImgError, match=r"a video: .*img2img batch"):
        collect([tmp_path / name])
