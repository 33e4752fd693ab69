"""Videos in a batch job. The driver reads a video's frame timestamps (`translator.video.probe`)
and cuts them into chunks of VIDEO_CHUNK_FRAMES; each chunk is one Ray Data row, enhanced by the
same `Enhancer` actors as the images: the actor decodes its frames (PyAV), runs each as a PNG
through `translator.compute.enhance_alone` (the endpoint's codec and tiled path) and stores the
chunk's enhanced frames as one object under a staging prefix named by the input's checksum and
the model. When every chunk is there the driver writes the output video in frame order (the
input's rate, timestamps, audio and metadata: `translator.video.write`), PUTs it in one request
and deletes the staging prefix. A chunk already staged (a re-run after a crash, a retried task
after a killed worker) is not computed again."""

from __future__ import annotations

import hashlib
import io
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.batch.plan import Item
from jobs.batch.spec import MADE_BY, SOURCE_SHA, VIDEO_CHUNK_FRAMES, BatchSpec
from translator import codec, video
from translator.compute import enhance_alone

log = logging.getLogger("img2img.batch")
STAGING = "batch/video"  # s3://<IMG2IMG_BUCKET>/batch/video/<input sha>-<model>/chunk-<first pts>.npz
CHUNK = "chunk"  # the "fmt" of a chunk row


def staging_prefix(sha: str, model_id: str) -> str:
    """The staging prefix of one video enhanced by one model (the same on every re-run)."""
    return f"{STAGING}/{sha[:24]}-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}/"


@dataclass
class Video:
    """A video input the driver has read: its item, checksum, local copy, frames and chunks
    [(first pts, last pts, frames)]."""

    item: Item
    sha: str
    path: Path
    info: video.VideoInfo
    chunks: list[tuple[int, int, int]]
    staging: str


def _row(item: Item, status: str, reason: str = "", seconds: float = 0.0, pixels: int = 0) -> dict:
    return {"key": item.key, "size": item.size, "out_key": item.out_key, "status": status, "reason": reason,
            "seconds": seconds, "pixels": pixels}


def prepare(spec: BatchSpec, settings: Settings, item: Item, workdir: Path) -> Video | dict:
    """Read a video input into `workdir` -> its Video, or its report row when there is nothing
    to compute: `skipped` (its output was made from this input by this model) or `failed`
    (not a video PyAV can read)."""
    body = Storage(settings, bucket=spec.src_bucket).get_bytes(item.key)
    sha = hashlib.sha256(body).hexdigest()
    meta = Storage(settings, bucket=spec.dst_bucket).metadata(item.out_key)
    if meta and meta.get(SOURCE_SHA) == sha and meta.get(MADE_BY) == spec.model_id:
        return _row(item, "skipped", "already written from this input by this model")
    path = workdir / f"{sha}{Path(item.key).suffix.lower()}"
    path.write_bytes(body)
    try:
        info = video.probe(path)
    except video.VideoError as e:
        return _row(item, "failed", str(e))
    return Video(item, sha, path, info, video.chunks(info.pts, VIDEO_CHUNK_FRAMES),
                 staging_prefix(sha, spec.model_id))


def chunk_rows(v: Video) -> list[dict]:
    """The Ray Data rows of a video's chunks (the image rows' columns, plus the chunk's)."""
    return [{"key": v.item.key, "size": v.item.size, "out_key": f"{v.staging}chunk-{first:012d}.npz", "fmt": CHUNK,
             "sha": v.sha, "first": first, "last": last, "frames": n} for first, last, n in v.chunks]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def enhance_chunk(spec: BatchSpec, model, src: Path, first: int, last: int, frames: int) -> tuple[bytes, int]:
    """Decode frames `first`..`last` (pts) of the local video `src`, each through the endpoint's
    path as a PNG -> (the chunk object: an .npz of "pts" (int64) and "f<i>" (each enhanced frame's
    PNG bytes as uint8), pixels of the input frames). Raises video.VideoError when it decodes
    another number of frames than `frames`, codec.RequestError for a frame the codec refuses."""
    pts, pngs, pixels = [], {}, 0
    for p, rgb in video.read_frames(src, first, last):
        data = enhance_alone(_png(rgb), spec.max_pixels, model, "AtoB", "png", spec.tile, spec.overlap,
                             raise_with="img2img batch SRC -o DST")[0]
        pngs[f"f{len(pts)}"] = np.frombuffer(data, np.uint8)
        pts.append(p)
        pixels += rgb.shape[0] * rgb.shape[1]
    if len(pts) != frames:
        raise video.VideoError(f"decoded {len(pts)} of the {frames} frames from pts {first}")
    buf = io.BytesIO()
    np.savez(buf, pts=np.asarray(pts, np.int64), **pngs)
    return buf.getvalue(), pixels


class ChunkWorker:
    """The chunk side of an `Enhancer` actor: a local copy of each video it works on (by
    checksum), and one chunk at a time."""

    def __init__(self, spec: BatchSpec, settings: Settings, model, workdir: Path):
        self.spec, self.model, self.workdir = spec, model, workdir
        self.src = Storage(settings, bucket=spec.src_bucket)
        self.staging = Storage(settings)

    def _local(self, key: str, sha: str) -> Path:
        path = self.workdir / f"{sha}{Path(key).suffix.lower()}"
        if not path.exists():
            body = self.src.get_bytes(key)
            if hashlib.sha256(body).hexdigest() != sha:
                raise video.VideoError(f"{key} changed while the job ran")
            tmp = path.with_suffix(".part")
            tmp.write_bytes(body)
            tmp.rename(path)
        return path

    def one(self, key: str, out_key: str, sha: str, first: int, last: int, frames: int) -> tuple[str, str, int]:
        """-> (status, reason, pixels) of one chunk: `skipped` when already staged."""
        if self.staging.exists(out_key):
            return "skipped", "chunk already staged", 0
        try:
            data, pixels = enhance_chunk(self.spec, self.model, self._local(key, sha), first, last, frames)
        except (video.VideoError, codec.RequestError) as e:
            return "failed", getattr(e, "message", str(e)), 0
        self.staging.put_bytes(out_key, data)
        return "written", "", pixels


def _frames(store: Storage, keys: list[str]):
    for key in keys:
        with np.load(io.BytesIO(store.get_bytes(key))) as chunk:
            for i, p in enumerate(chunk["pts"]):
                with Image.open(io.BytesIO(chunk[f"f{i}"].tobytes())) as img:
                    yield int(p), np.asarray(img.convert("RGB"))


def finish(spec: BatchSpec, settings: Settings, v: Video, chunks: list[dict]) -> dict:
    """Write the output video from the staged chunks (all of them `written` or `skipped`),
    one PUT with the input's checksum and the model as metadata, then delete the staging
    prefix -> the video's report row (`seconds`: its chunks' and the writing's). A failed chunk
    fails the video (the staged chunks stay for a re-run)."""
    t0 = time.perf_counter()
    spent = sum(float(c["seconds"]) for c in chunks)
    pixels = sum(int(c["pixels"]) for c in chunks)
    bad = sorted((c for c in chunks if c["status"] == "failed"), key=lambda c: c["out_key"])
    if bad:
        return _row(v.item, "failed", f"frames from pts {bad[0]['first']}: {bad[0]['reason']}", spent)
    staging = Storage(settings)
    keys = sorted({c["out_key"] for c in chunks})
    if len(keys) != len(v.chunks):
        return _row(v.item, "failed", f"{len(keys)} of {len(v.chunks)} chunks came back", spent)
    out = v.path.with_name(f"out-{v.path.stem}{Path(v.item.out_key).suffix.lower()}")
    try:
        written = video.write(v.path, _frames(staging, keys), out)
    except (video.VideoError, Img2ImgError) as e:  # Img2ImgError: a chunk gone (another job finished it)
        return _row(v.item, "failed", str(e), spent)
    if written != len(v.info.pts):
        return _row(v.item, "failed", f"wrote {written} of {len(v.info.pts)} frames", spent)
    media = mimetypes.guess_type(v.item.out_key)[0] or "application/octet-stream"
    Storage(settings, bucket=spec.dst_bucket).put_bytes(v.item.out_key, out.read_bytes(), media,
                                                        metadata={SOURCE_SHA: v.sha, MADE_BY: spec.model_id})
    try:
        staging.delete_prefix(v.staging)
    except Img2ImgError as e:  # the output is whole; a left-over staging prefix is only space
        log.warning("staging %s not deleted: %s", v.staging, e)
    return _row(v.item, "written", "", round(spent + time.perf_counter() - t0, 4), pixels)
