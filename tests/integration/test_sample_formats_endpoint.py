"""Sample formats through the real model: `/enhance` and `enhance --local` give float, 32-bit
and 16-bit grey+alpha images back in their own type and range (the quick demo's model; the
codec-level table is tests/unit/test_sample_formats.py)."""

from __future__ import annotations

import io

import cv2
import httpx
import numpy as np
import pytest
import tifffile

from translator.samples import write_png16_grey_alpha

pytestmark = pytest.mark.integration
H, W = 48, 64


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack" if arr.ndim == 2 else "rgb")
    return buf.getvalue()


def smooth(top: float, channels: int) -> np.ndarray:
    """A soft diagonal ramp 0..top (nothing a deblurring model should move far)."""
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = (xx / (W - 1) + yy / (H - 1)) / 2 * top
    return np.dstack([ramp] * channels) if channels > 1 else ramp


HDR = smooth(4.0, 3).astype(np.float32)
WIDE = np.rint(smooth(1_000_000, 1)).astype(np.int32)
GA16 = np.dstack([np.rint(smooth(65535, 1)).astype(np.uint16),
                  np.random.default_rng(0).integers(0, 65536, (H, W), dtype=np.uint16)])


def post(url, body, **params):
    return httpx.post(url + "/enhance", content=body, params=params, timeout=180,
                      headers={"Content-Type": "image/tiff" if body[:2] in (b"II", b"MM") else "image/png"})


def assert_range_kept(out: np.ndarray, src: np.ndarray):
    """Same type and shape; the source's range, not pinned at its top (clipping put 75% there)."""
    assert out.dtype == src.dtype and out.shape == src.shape
    top = float(src.max())
    assert float(out.max()) <= top * 1.05 and float(out.min()) >= -0.05 * top
    assert np.mean(out >= top * 0.99) < 0.1
    assert abs(float(out.mean()) - float(src.mean())) < 0.1 * top


def check_grey_alpha(png: bytes):
    assert (png[24], png[25]) == (16, 4)  # 16-bit grey+alpha PNG
    bgra = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bgra[..., 3], GA16[..., 1])  # alpha exact
    assert abs(float(bgra[..., 0].mean()) - float(GA16[..., 0].mean())) < 0.1 * 65535


def test_endpoint_keeps_float_and_32bit_samples_and_grey_alpha(endpoint):
    r = post(endpoint, tiff(HDR), format="tiff")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/tiff" and r.headers["x-bit-depth"] == "32"
    assert_range_kept(tifffile.imread(io.BytesIO(r.content)), HDR)
    r = post(endpoint, tiff(WIDE), format="tiff")
    assert r.status_code == 200, r.text
    assert_range_kept(tifffile.imread(io.BytesIO(r.content)), WIDE)
    r = post(endpoint, write_png16_grey_alpha(GA16[..., 0], GA16[..., 1]))
    assert r.status_code == 200, r.text
    check_grey_alpha(r.content)


@pytest.mark.parametrize("body, params, status, words", [
    (tiff(HDR), {}, 400, "32-bit float RGB image is written back only as TIFF"),  # the default png
    (tiff(HDR), {"format": "jpeg"}, 400, "ask for tiff"),
    (tiff(np.where(HDR > 3, np.nan, HDR).astype(np.float32)), {"format": "tiff"}, 415, "NaN or infinite"),
    (tiff(WIDE.astype(np.int64)), {"format": "tiff"}, 415, "64-bit signed integer grey TIFF is not supported"),
])
def test_endpoint_refuses_what_it_cannot_keep_by_name(endpoint, body, params, status, words):
    r = post(endpoint, body, **params)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert "Pillow" not in r.json()["error"]


def test_enhance_local_keeps_them_too(cli, demo_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "hdr.tif").write_bytes(tiff(HDR))
    (src / "ga.png").write_bytes(write_png16_grey_alpha(GA16[..., 0], GA16[..., 1]))
    model = f"{demo_run.model}@champion"
    r = cli("enhance", src / "hdr.tif", "--local", "--model", model, "--format", "tiff", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert_range_kept(tifffile.imread(tmp_path / "out" / "hdr.enhanced.tiff"), HDR)
    r = cli("enhance", src / "ga.png", "--local", "--model", model, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    check_grey_alpha((tmp_path / "out" / "ga.enhanced.png").read_bytes())
    r = cli("enhance", src / "hdr.tif", "--local", "--model", model, "-o", tmp_path / "png")
    assert r.exit_code == 1 and "written back only as TIFF" in r.output, r.output
