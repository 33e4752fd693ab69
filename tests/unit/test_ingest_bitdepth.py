"""A dataset built from 16-bit photos keeps 16 bits in its PNGs and training reads them as
float; 8-bit photos stay 8-bit (the planning/encoding half of ingest, no object store)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from jobs.data.decode import _decode
from jobs.data.plan import IngestOptions, Row
from jobs.data.sources import SourceFile
from jobs.data.worker import _png, _row_images
from translator import images


def _rows(path, opts):
    pair = _row_images(Row("x#0#0", (SourceFile("x.png", str(path)),)), opts, None, {})
    return [_png(im) for im in pair]


def test_16bit_source_gives_16bit_pngs_read_back_as_float(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = ((xx * 64 + yy * 7) * 16).astype(np.uint16)  # fine gradations an 8-bit copy would merge
    rgb = np.dstack([smooth, smooth[::-1], np.full_like(smooth, 30000)])
    path = tmp_path / "x.png"
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
    degraded, clean = _rows(path, IngestOptions(name="t", degrade="gaussian:1.0", size=32))
    assert degraded[24] == 16 and clean[24] == 16  # IHDR bit depth
    arr = _decode(clean)
    assert arr.dtype == np.float32 and arr.shape == (32, 32, 3) and 0 <= arr.min() and arr.max() <= 1
    assert len(np.unique(arr[..., 0])) > 256  # more levels than 8 bits hold


def test_8bit_source_stays_8bit(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    degraded, clean = _rows(path, IngestOptions(name="t", degrade="gaussian:1.0", size=32))
    assert Image.open(io.BytesIO(clean)).mode == "RGB" and clean[24] == 8
    assert np.allclose(_decode(clean) * 255, np.asarray(Image.open(io.BytesIO(clean))), atol=1e-3)


def _ihdr(png: bytes) -> tuple[int, int]:
    return png[24], png[25]  # bit depth, colour type (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA)


def _tiff(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack" if arr.ndim == 2 else "rgb")
    return buf.getvalue()


_G8 = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
_G16 = np.random.default_rng(2).integers(0, 65536, (40, 40), dtype=np.uint16)


def _pil(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


LAYOUTS = [  # (id, source bytes, stored (bit depth, colour type))
    ("8-bit grey", _pil(_G8), (8, 0)),
    ("8-bit grey+alpha", _pil(np.dstack([_G8, _G8[::-1]]), "LA"), (8, 4)),
    ("8-bit RGB", _pil(np.dstack([_G8] * 3)), (8, 2)),
    ("8-bit RGBA", _pil(np.dstack([_G8] * 3 + [_G8.T])), (8, 6)),
    ("16-bit grey", _pil(_G16), (16, 0)),
    ("16-bit grey+alpha", images.samples.write_png16_grey_alpha(_G16, _G16.T.copy()), (16, 4)),
    ("16-bit RGB", cv2.imencode(".png", np.dstack([_G16] * 3))[1].tobytes(), (16, 2)),
    ("32-bit float grey HDR TIFF", _tiff((_G16 / 16384).astype(np.float32)), (16, 0)),
    ("32-bit float RGB TIFF", _tiff(np.dstack([_G16 / 65535] * 3).astype(np.float32)), (16, 2)),
    ("32-bit integer grey TIFF", _tiff(_G16.astype(np.int32) * 15), (16, 0)),
]


@pytest.mark.parametrize("data, stored", [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_what_ingest_stores_keeps_grey_alpha_and_depth(tmp_path, data, stored):
    path = tmp_path / "x.img"
    path.write_bytes(data)
    for degradation in ("noise:20", "gaussian:1.0"):  # per-channel noise must not tint a grey photo
        degraded, clean = _rows(path, IngestOptions(name="t", degrade=degradation, size=32))
        assert _ihdr(clean) == _ihdr(degraded) == stored
        arr = _decode(clean)  # what training reads: 3 channels in [0, 1] whatever was stored
        assert arr.shape == (32, 32, 3) and 0 <= arr.min() and arr.max() <= 1
        assert arr.max() > 0.9  # normalised by the source's own range, not crushed or clipped


def test_ingest_keeps_alpha_of_an_8bit_grey_alpha_photo_exactly(tmp_path):
    path = tmp_path / "x.png"
    la = np.dstack([_G8, _G8[::-1]])
    path.write_bytes(_pil(la, "LA"))
    _, clean = _rows(path, IngestOptions(name="t", degrade="gaussian:1.0", size=None))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(clean))), la)


def test_8bit_colour_model_tiffs_and_float_tiffs_pillow_cannot_open_are_ingested(tmp_path):
    for name, data in [("cmyk.tif", _pil_tiff(Image.fromarray(np.dstack([_G8] * 3)).convert("CMYK"))),
                       ("rgba-float.tif", _tiff(np.dstack([_G16 / 65535] * 4).astype(np.float32)))]:
        path = tmp_path / name
        path.write_bytes(data)
        degraded, clean = _rows(path, IngestOptions(name="t", degrade="gaussian:1.0", size=32))
        assert _decode(clean).shape == (32, 32, 3)


def _pil_tiff(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()
