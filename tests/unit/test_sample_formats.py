"""Every sample format the decoders read is either kept (type, range, grey/colour and alpha come
back as they went in, through an identity 'model') or refused with a message naming it: never
clipped, never a hint that blames the container (codec level, as `/enhance` and
`enhance --local` use it)."""

import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from translator import codec, images

H, W = 12, 16
RNG = np.random.default_rng(7)


def ramp(lo: float, hi: float, channels: int, dtype) -> np.ndarray:
    """H x W (x channels) values spanning lo..hi exactly (first and last sample)."""
    n = H * W * channels
    arr = np.linspace(lo, hi, n).astype(np.float64)
    if np.dtype(dtype).kind in "ui":
        arr = np.rint(arr)
    arr = arr.astype(dtype)
    return arr.reshape((H, W, channels) if channels > 1 else (H, W))


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    kw.setdefault("photometric", "minisblack" if arr.ndim == 2 or arr.shape[2] == 2 else "rgb")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        kw.setdefault("extrasamples", ("unassalpha",))
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def png16(arr: np.ndarray) -> bytes:
    """uint16 grey, RGB or RGBA through OpenCV; grey+alpha through the project's own writer."""
    if arr.ndim == 3 and arr.shape[2] == 2:
        return images.samples.write_png16_grey_alpha(arr[..., 0], arr[..., 1])
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", arr)[1].tobytes()


def read_back(out: bytes, fmt: str) -> np.ndarray:
    """The output's stored samples, channels last, read by a decoder other than the codec's."""
    if fmt == "tiff":
        return tifffile.imread(io.BytesIO(out))
    if out[24] == 16:  # 16-bit PNG: OpenCV expands grey+alpha to BGRA, so take it apart again
        arr = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        if out[25] == 4:
            assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
            arr = np.dstack([arr[..., 0], arr[..., 3]])
        return arr
    return np.asarray(Image.open(io.BytesIO(out)))


def roundtrip(data: bytes, fmt: str) -> tuple[codec.DecodedImage, bytes]:
    decoded = codec.decode(data, 16_000_000)
    codec.check_output(fmt, decoded)
    return decoded, codec.encode(decoded.tensor.clone(), decoded, fmt)[0]


GREY8, RGB8 = ramp(0, 255, 1, np.uint8), ramp(0, 255, 3, np.uint8)
ALPHA8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
PAL = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
PAL_T = PAL.copy()
PAL_T.info["transparency"] = 3
CMYK = Image.fromarray(RGB8).convert("CMYK")
YCC = Image.fromarray(RGB8).convert("YCbCr")
LAB = Image.fromarray(RGB8).convert("LAB")
F_SDR, F_HDR = ramp(0, 1, 1, np.float32), ramp(0, 4, 1, np.float32)
F_RGB_HDR, F_NEG = ramp(0, 4, 3, np.float32), ramp(-2, 3, 1, np.float32)
I32 = ramp(0, 1_000_000, 1, np.int32)
U16_GA = np.dstack([ramp(0, 65535, 1, np.uint16), RNG.integers(0, 65536, (H, W), dtype=np.uint16)])
U16_RGBA = np.dstack([ramp(0, 65535, 3, np.uint16), RNG.integers(0, 65536, (H, W), dtype=np.uint16)])
TWELVE = ramp(0, 4095, 1, np.uint16)

# (id, source bytes, output format, samples expected back (channels last, alpha last), dtype)
KEPT = [
    ("1-bit PNG -> 8-bit grey", pil_bytes(Image.fromarray(GREY8 > 127), "PNG"), "png", (GREY8 > 127) * 255, "uint8"),
    ("L PNG", pil_bytes(Image.fromarray(GREY8), "PNG"), "png", GREY8, "uint8"),
    ("LA PNG", pil_bytes(Image.fromarray(np.dstack([GREY8, ALPHA8]), "LA"), "PNG"), "png",
     np.dstack([GREY8, ALPHA8]), "uint8"),
    ("P PNG -> RGB", pil_bytes(PAL, "PNG"), "png", np.asarray(PAL.convert("RGB")), "uint8"),
    ("P PNG with transparency -> RGBA", pil_bytes(PAL_T, "PNG", transparency=3), "png",
     np.asarray(PAL_T.convert("RGBA")), "uint8"),
    ("RGB PNG", pil_bytes(Image.fromarray(RGB8), "PNG"), "png", RGB8, "uint8"),
    ("RGBA PNG", pil_bytes(Image.fromarray(np.dstack([RGB8, ALPHA8])), "PNG"), "png",
     np.dstack([RGB8, ALPHA8]), "uint8"),
    ("LA TIFF", pil_bytes(Image.fromarray(np.dstack([GREY8, ALPHA8]), "LA"), "TIFF"), "tiff",
     np.dstack([GREY8, ALPHA8]), "uint8"),
    ("PA TIFF -> RGBA", pil_bytes(Image.fromarray(np.dstack([np.asarray(PAL), ALPHA8]), "PA").convert("PA"), "TIFF"),
     "png", None, "uint8"),
    ("CMYK TIFF -> RGB", pil_bytes(CMYK, "TIFF"), "png", np.asarray(CMYK.convert("RGB")), "uint8"),
    ("CMYK JPEG -> RGB", pil_bytes(CMYK, "JPEG", quality=100), "png", None, "uint8"),
    ("YCbCr TIFF -> RGB", pil_bytes(YCC, "TIFF"), "png", np.asarray(YCC.convert("RGB")), "uint8"),
    ("LAB TIFF -> RGB", pil_bytes(LAB, "TIFF"), "png", np.asarray(LAB.convert("RGB")), "uint8"),
    ("8-bit RGB planar TIFF", tiff_bytes(np.moveaxis(RGB8, -1, 0), photometric="rgb", planarconfig="separate"),
     "tiff", RGB8, "uint8"),
    ("16-bit grey PNG (12-bit data)", pil_bytes(Image.fromarray(TWELVE), "PNG"), "png", TWELVE, "uint16"),
    ("16-bit grey+alpha PNG", png16(U16_GA), "png", U16_GA, "uint16"),
    ("16-bit grey+alpha PNG -> TIFF", png16(U16_GA), "tiff", U16_GA, "uint16"),
    ("16-bit grey+alpha TIFF", tiff_bytes(U16_GA), "tiff", U16_GA, "uint16"),
    ("16-bit grey+alpha TIFF -> PNG", tiff_bytes(U16_GA), "png", U16_GA, "uint16"),
    ("16-bit RGBA PNG", png16(U16_RGBA), "png", U16_RGBA, "uint16"),
    ("16-bit RGB planar TIFF", tiff_bytes(np.moveaxis(U16_RGBA[..., :3], -1, 0), photometric="rgb",
                                          planarconfig="separate"), "tiff", U16_RGBA[..., :3], "uint16"),
    ("I;16 TIFF", pil_bytes(Image.fromarray(TWELVE), "TIFF"), "tiff", TWELVE, "uint16"),
    ("32-bit float grey TIFF 0-1 (Pillow F)", pil_bytes(Image.fromarray(F_SDR, "F"), "TIFF"), "tiff", F_SDR, "float32"),
    ("32-bit float grey TIFF 0-4 HDR", pil_bytes(Image.fromarray(F_HDR, "F"), "TIFF"), "tiff", F_HDR, "float32"),
    ("32-bit float grey TIFF -2..3", tiff_bytes(F_NEG), "tiff", F_NEG, "float32"),
    ("32-bit float RGB TIFF 0-4 HDR", tiff_bytes(F_RGB_HDR), "tiff", F_RGB_HDR, "float32"),
    ("32-bit float RGBA TIFF", tiff_bytes(np.dstack([F_RGB_HDR, F_SDR])), "tiff", np.dstack([F_RGB_HDR, F_SDR]),
     "float32"),
    ("16-bit float grey TIFF", tiff_bytes(ramp(0, 2, 1, np.float16)), "tiff", ramp(0, 2, 1, np.float16), "float16"),
    ("64-bit float RGB TIFF", tiff_bytes(ramp(-1, 1, 3, np.float64)), "tiff", ramp(-1, 1, 3, np.float64), "float64"),
    ("32-bit integer grey TIFF 0-1,000,000 (Pillow I)", pil_bytes(Image.fromarray(I32, "I"), "TIFF"), "tiff", I32,
     "int32"),
    ("32-bit unsigned RGB TIFF", tiff_bytes(ramp(0, 1_000_000, 3, np.uint32)), "tiff",
     ramp(0, 1_000_000, 3, np.uint32), "uint32"),
    ("16-bit signed grey TIFF", tiff_bytes(ramp(-1000, 1000, 1, np.int16)), "tiff", ramp(-1000, 1000, 1, np.int16),
     "int16"),
    ("32-bit integer grey+alpha TIFF", tiff_bytes(np.dstack([I32, I32[::-1]])), "tiff", np.dstack([I32, I32[::-1]]),
     "int32"),
]


@pytest.mark.parametrize("source, fmt, expected, dtype", [c[1:] for c in KEPT], ids=[c[0] for c in KEPT])
def test_sample_format_is_kept(source, fmt, expected, dtype):
    decoded, out = roundtrip(source, fmt)
    back = read_back(out, fmt)
    assert back.dtype == np.dtype(dtype)
    if expected is None:  # lossy source (JPEG) or a palette mode: compare with Pillow's own RGB(A)
        ref = Image.open(io.BytesIO(source))
        expected = np.asarray(ref.convert("RGBA" if ref.mode in ("PA", "RGBA", "LA") else "RGB"))
    assert back.shape == expected.shape
    if back.dtype.kind == "f":
        assert np.allclose(back, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
        assert back.max() == pytest.approx(float(expected.max()), rel=1e-5)  # the HDR peak is kept, not clipped
    else:
        assert np.array_equal(back, expected)


def test_grey_stays_grey_even_when_the_model_returns_colour():
    """A colour model's R != G output for a grey source is written as grey (BT.601 luma)."""
    decoded = codec.decode(png16(U16_GA), 1_000_000)
    out = decoded.tensor.clone()
    out[:, 0] = -1  # a model that tints: red off
    data, _ = codec.encode(out, decoded, "png")
    assert data[24] == 16 and data[25] == 4  # 16-bit grey+alpha PNG
    assert np.array_equal(read_back(data, "png")[..., 1], U16_GA[..., 1])


REFUSED = [
    ("64-bit complex TIFF", tiff_bytes(ramp(0, 1, 1, np.float32).astype(np.complex64)), "complex grey TIFF"),
    ("64-bit integer TIFF", tiff_bytes(ramp(0, 9, 1, np.int64)), "64-bit signed integer grey TIFF"),
    ("float TIFF with NaN", tiff_bytes(np.where(F_HDR > 3, np.nan, F_HDR).astype(np.float32)), "NaN or infinite"),
    ("16-bit CMYK TIFF", tiff_bytes(ramp(0, 65535, 4, np.uint16), photometric="separated"), "16-bit integer separated"),
    ("5-channel float TIFF", tiff_bytes(ramp(0, 1, 5, np.float32), photometric="minisblack", planarconfig="contig"),
     "32-bit float 5-channel TIFF"),
]


@pytest.mark.parametrize("source, words", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_sample_format_not_kept_is_refused_by_name(source, words):
    with pytest.raises(codec.RequestError) as e:
        codec.decode(source, 1_000_000)
    assert e.value.status == 415 and words in e.value.message and "Pillow" not in e.value.message


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_float_source_asks_for_tiff_before_any_model_time(fmt):
    decoded = codec.decode(tiff_bytes(F_RGB_HDR), 1_000_000)
    with pytest.raises(codec.RequestError) as e:
        codec.check_output(fmt, decoded)
    assert e.value.status == 400 and "32-bit float RGB" in e.value.message and "tiff" in e.value.message


def test_orientation_of_wide_samples_matches_pillow():
    arr = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    for orientation in range(1, 9):
        want = np.asarray(images.ImageOps.exif_transpose(_oriented(arr, orientation)))
        assert np.array_equal(images._orient(arr, orientation), want), orientation


def _oriented(arr, orientation):
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return Image.open(io.BytesIO(pil_bytes(img, "PNG", exif=exif)))


BROKEN_TIFF = tiff_bytes(F_RGB_HDR)


@pytest.mark.parametrize("body", [b"II*\x00", b"II*\x00garbage", b"MM\x00*" + bytes(10), BROKEN_TIFF[:200],
                                  BROKEN_TIFF[:len(BROKEN_TIFF) // 2]], ids=["header only", "garbage", "no page",
                                                                          "cut in the IFD", "cut in the samples"])
def test_broken_tiff_is_a_400_not_an_exception(body):
    with pytest.raises(codec.RequestError) as e:
        codec.decode(body, 1_000_000)
    assert e.value.status == 400 and "broken or truncated" in e.value.message
