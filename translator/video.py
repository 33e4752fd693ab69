"""Video files for the batch job, with PyAV (FFmpeg's libraries): recognise a video by its
container signature, list its frames' timestamps, decode a run of frames as RGB, and write the
enhanced frames back in a container at the input's frame rate and timestamps, with the input's
audio streams and metadata copied packet for packet (not re-encoded).

No model here: the batch job enhances each frame as a PNG through `translator.compute`, the
path every image takes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

# Suffixes the batch job treats as video files (their outputs keep the container).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
# ISO BMFF brands of still images (HEIF/AVIF): "ftyp" alone does not make a video.
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis", b"jpeg", b"jpgs"}
# Quality of re-encoded video: near-transparent for the codecs that take a CRF.
CRF = "16"


def is_video(head: bytes) -> bool:
    """Whether the first bytes of a file (16 suffice) are a video container's: ISO BMFF
    (MP4, MOV, 3GP: "ftyp" at byte 4, not a HEIF/AVIF still-image brand), Matroska/WebM
    (EBML magic), AVI (RIFF....AVI ), FLV, MPEG-PS pack header, ASF/WMV GUID, or MPEG-TS
    (sync byte 0x47 at 0 and 188)."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    return (head.startswith(b"\x1a\x45\xdf\xa3")
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
            or head.startswith(b"FLV\x01")
            or head.startswith(b"\x00\x00\x01\xba")
            or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")
            or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47))


class VideoError(Exception):
    """A file PyAV cannot read as a video (no video stream, corrupt, unknown container)."""


@dataclass
class VideoInfo:
    """What the batch job plans from: `pts` every frame's presentation timestamp in `time_base`
    units, ascending (one per frame); `rate` the average frame rate (frames/s); `width`,
    `height` in px; `codec` the video codec's name; `audio` the number of audio streams."""

    pts: list[int]
    time_base: Fraction
    rate: Fraction
    width: int
    height: int
    codec: str
    audio: int


def probe(path: Path) -> VideoInfo:
    """Read the container's packets (no decoding) -> VideoInfo of its first video stream.
    Raises VideoError when it has none, or a packet without a timestamp."""
    try:
        with av.open(str(path)) as box:
            if not box.streams.video:
                raise VideoError("no video stream")
            vs = box.streams.video[0]
            pts = []
            for packet in box.demux(vs):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                if packet.pts is None:
                    raise VideoError("a video packet has no timestamp")
                pts.append(int(packet.pts))
            if not pts:
                raise VideoError("no video frame")
            rate = vs.average_rate or vs.guessed_rate
            if not rate:
                raise VideoError("no frame rate")
            return VideoInfo(sorted(pts), Fraction(vs.time_base), Fraction(rate), vs.codec_context.width,
                             vs.codec_context.height, vs.codec_context.name, len(box.streams.audio))
    except (av.FFmpegError, ValueError) as e:
        raise VideoError(f"not a video PyAV can read: {e}") from None


def chunks(pts: list[int], frames: int) -> list[tuple[int, int, int]]:
    """Split ascending timestamps into runs of at most `frames` -> [(first pts, last pts, count)]."""
    return [(pts[i], pts[min(i + frames, len(pts)) - 1], min(frames, len(pts) - i)) for i in range(0, len(pts), frames)]


def read_frames(path: Path, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
    """The frames with first <= pts <= last, in presentation order -> (pts, H x W x 3 uint8
    RGB). Seeks to the keyframe before `first`, so a run costs its own frames, not the video's
    start. Raises VideoError for a file PyAV cannot decode."""
    try:
        with av.open(str(path)) as box:
            vs = box.streams.video[0]
            box.seek(first, stream=vs, backward=True, any_frame=False)
            for frame in box.decode(vs):
                if frame.pts is None or frame.pts < first:
                    continue
                if frame.pts > last:
                    break
                yield int(frame.pts), frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, ValueError) as e:
        raise VideoError(f"cannot decode the video: {e}") from None


def _encoder(name: str) -> str:
    """The input's codec when FFmpeg can write it, else H.264."""
    try:
        av.codec.Codec(name, "w")
        return name
    except (av.FFmpegError, ValueError):
        return "libx264"


def write(src: Path, frames: Iterable[tuple[int, np.ndarray]], dst: Path) -> int:
    """Write `frames` ((pts in `src`'s video time base, H x W x 3 uint8 RGB), in order; every
    frame the same size) as the video stream of `dst` (its container chosen by its suffix), in
    `src`'s video codec where FFmpeg can encode it (else H.264), at `src`'s frame rate and
    timestamps; `src`'s audio streams are copied packet for packet, and its container and stream
    metadata (title, language...) with them. -> the number of frames written. Raises VideoError."""
    count = 0
    try:
        with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
            vin = inp.streams.video[0]
            out.metadata.update(inp.metadata)
            vout = None
            for pts, rgb in frames:
                if vout is None:
                    vout = out.add_stream(_encoder(vin.codec_context.name), rate=vin.average_rate or vin.guessed_rate)
                    vout.height, vout.width = rgb.shape[:2]
                    formats = [f.name for f in vout.codec_context.codec.video_formats or ()]
                    vout.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
                    vout.time_base = vin.time_base
                    vout.metadata.update(vin.metadata)
                    if vout.codec_context.name in ("libx264", "libx265", "h264", "hevc"):
                        vout.options = {"crf": CRF}
                    elif vin.bit_rate:
                        vout.bit_rate = vin.bit_rate * max(1, rgb.shape[0] * rgb.shape[1]
                                                           // max(1, vin.codec_context.width * vin.codec_context.height))
                    audio = {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}
                    for s in inp.streams.audio:
                        audio[s.index].metadata.update(s.metadata)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = pts, vin.time_base
                out.mux(vout.encode(frame))
                count += 1
            if vout is None:
                raise VideoError("no frame to write")
            out.mux(vout.encode(None))
            for packet in inp.demux(*inp.streams.audio) if inp.streams.audio else ():
                if packet.dts is None:  # the demuxer's flush packets
                    continue
                packet.stream = audio[packet.stream.index]
                out.mux(packet)
    except (av.FFmpegError, ValueError) as e:
        raise VideoError(f"cannot write the video: {e}") from None
    return count
