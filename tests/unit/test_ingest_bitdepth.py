"""A dataset built from 16-bit photos keeps 16 bits in its PNGs and training reads them as
float; 8-bit photos stay 8-bit (the planning/encoding half of ingest, no object store)."""

import io

import cv2
import numpy as np
from PIL import Image

from jobs.data import _decode
from jobs.ingest_plan import IngestOptions, Row
from jobs.ingest_shard import _png, _row_images
from jobs.sources import SourceFile


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
