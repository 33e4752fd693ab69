"""What users rely on when an image goes through the endpoint or `enhance --local`: bit depth,
value range, alpha, colour profile and EXIF come back as they went in (codec level, no model)."""

import io

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms

from translator import codec, images

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def roundtrip(data: bytes, fmt: str = "png") -> tuple[codec.DecodedImage, bytes]:
    """Decode, pass the tensor through unchanged (an identity 'model'), encode."""
    decoded = codec.decode(data, 16_000_000)
    return decoded, codec.encode(decoded.tensor.clone(), decoded, fmt)[0]


def png16(arr: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    return cv2.imencode(".png", bgr)[1].tobytes()


def read16(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def test_16bit_rgb_png_ramp_comes_back_16bit_and_exact():
    ramp = np.linspace(0, 65535, 48 * 40 * 3).round().astype(np.uint16).reshape(48, 40, 3)
    decoded, out = roundtrip(png16(ramp))
    assert decoded.bits == 16 and out[24] == 16  # PNG IHDR bit depth
    assert np.array_equal(read16(out), ramp)


def test_12bit_data_in_16bit_png_keeps_its_range_and_levels():
    data = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # all 4096 levels of 12 bits
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, "PNG")
    decoded, out = roundtrip(buf.getvalue())
    assert decoded.picture.scale == 4095 and float(decoded.tensor.max()) == pytest.approx(1.0)
    back = np.asarray(Image.open(io.BytesIO(out)))
    assert back.dtype == np.uint16 and back.max() == 4095 and len(np.unique(back)) == 4096
    assert np.array_equal(back, data)


def test_16bit_tiff_in_16bit_tiff_out_and_16bit_png_from_it():
    arr = np.random.default_rng(0).integers(0, 65536, (30, 20, 3), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, iccprofile=SRGB)
    _, out = roundtrip(buf.getvalue(), "tiff")
    with tifffile.TiffFile(io.BytesIO(out)) as tf:
        assert np.array_equal(tf.asarray(), arr) and tf.pages[0].tags["InterColorProfile"].value == SRGB
    _, out = roundtrip(buf.getvalue(), "png")
    assert np.array_equal(read16(out), arr)
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)  # OpenCV's TIFF writer tags SampleFormat per channel
    _, out = roundtrip(cv2.imencode(".tiff", bgr)[1].tobytes(), "tiff")
    assert np.array_equal(tifffile.imread(io.BytesIO(out)), arr)


def test_8bit_stays_8bit_exactly():
    rgb = np.random.default_rng(1).integers(0, 256, (25, 35, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    decoded, out = roundtrip(buf.getvalue())
    img = Image.open(io.BytesIO(out))
    assert decoded.bits == 8 and img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)


def test_16bit_alpha_is_put_back_untouched():
    rgba = np.random.default_rng(2).integers(0, 65536, (16, 24, 4), dtype=np.uint16)
    bgra = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)
    _, out = roundtrip(cv2.imencode(".png", bgra)[1].tobytes())
    back = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, bgra)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_icc_profile_and_exif_are_carried_orientation_is_applied(fmt):
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "Camera maker"
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", icc_profile=SRGB, exif=exif)
    _, out = roundtrip(buf.getvalue(), fmt)
    img = Image.open(io.BytesIO(out))
    assert img.size == (20, 30)  # as displayed
    assert img.info.get("icc_profile") == SRGB
    if fmt != "tiff":
        tags = img.getexif()
        assert tags.get(0x010F) == "Camera maker" and 0x0112 not in tags


def test_16bit_png_keeps_icc_exif_and_orientation():
    arr = np.random.default_rng(4).integers(0, 65536, (10, 30, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8
    exif[0x010F] = "Sensor"
    src = images._add_png_chunks(png16(arr), SRGB, exif.tobytes().removeprefix(b"Exif\x00\x00"))
    _, out = roundtrip(src)
    img = Image.open(io.BytesIO(out))
    assert img.size == (10, 30) and img.info["icc_profile"] == SRGB and img.getexif()[0x010F] == "Sensor"
    assert np.array_equal(read16(out), np.rot90(arr))  # orientation 8 = rotate 90 counter-clockwise


def test_cmyk_profile_is_not_attached_to_rgb_output():
    cmyk_profile = bytearray(SRGB)
    cmyk_profile[16:20] = b"CMYK"
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(buf, "JPEG", icc_profile=bytes(cmyk_profile))
    _, out = roundtrip(buf.getvalue())
    assert "icc_profile" not in Image.open(io.BytesIO(out)).info


def test_multi_frame_inputs_report_their_frame_count():
    frames = [Image.new("RGB", (12, 12), (i * 80, 0, 0)) for i in range(3)]
    for fmt in ("GIF", "TIFF"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        assert codec.decode(buf.getvalue(), 1_000_000).frames == 3


def test_bad_inputs_get_their_status_not_an_exception():
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(good, "PNG")
    cases = {b"": 400, b"not an image": 415, good.getvalue()[:60]: 400}
    for body, status in cases.items():
        with pytest.raises(codec.RequestError) as e:
            codec.decode(body, 1_000_000)
        assert e.value.status == status
    with pytest.raises(codec.RequestError) as e:
        codec.decode(good.getvalue(), 100)
    assert e.value.status == 413
    with pytest.raises(codec.RequestError) as e:
        codec.encode(torch.zeros(1, 3, 4, 4), codec.decode(good.getvalue(), 10_000), "gif")
    assert e.value.status == 400


@pytest.mark.parametrize("scale", [2, 4])
def test_an_upscaled_16bit_png_keeps_its_depth_icc_exif_and_orientation(scale):
    """Super-resolution output (`scale` x the input, as a model returns it) of a 16-bit PNG with
    an sRGB profile, EXIF and an orientation tag: 16 bits, the profile and EXIF kept, the size
    scale x the displayed size, the bicubic upscale's values where the 'model' is bicubic."""
    import torch.nn.functional as F

    arr = np.random.default_rng(6).integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 9 x 13 stored -> 13 x 9 displayed
    exif[0x010F] = "Sensor"
    src = images._add_png_chunks(png16(arr), SRGB, exif.tobytes().removeprefix(b"Exif\x00\x00"))
    decoded = codec.decode(src, 16_000_000, scale=scale)
    x = decoded.tensor
    out = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)  # a bicubic 'model'
    data, media = codec.encode(out, decoded, "png")
    img = Image.open(io.BytesIO(data))
    assert media == "image/png" and img.size == (9 * scale, 13 * scale)  # (width, height) as displayed
    assert img.info["icc_profile"] == SRGB and img.getexif()[0x010F] == "Sensor" and 0x0112 not in img.getexif()
    got = read16(data)
    assert got.dtype == np.uint16 and got.shape == (13 * scale, 9 * scale, 3)
    assert len(np.unique(got)) > 256  # 16-bit levels, not an 8-bit image widened
