"""Synthetic videos for the tests, made with PyAV: random frames and a sine tone."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# container suffix -> (video codec, audio codec) FFmpeg's wheels of PyAV can write
KINDS = {".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".mkv": ("libx264", "aac"),
         ".webm": ("libvpx", "libopus"), ".avi": ("mpeg4", "mp3")}


def synthetic_video(path: Path, fps: int = 10, seconds: int = 2, width: int = 48, height: int = 32,
                    title: str = "synthetic", seed: int = 0) -> Path:
    """Write `seconds` of `fps` random RGB frames (width x height px) and a 440 Hz mono tone
    (48 kHz) into `path`, in the container its suffix names (codecs from KINDS), with the
    container metadata title `title`. -> path."""
    vcodec, acodec = KINDS[path.suffix]
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        out.metadata["title"] = title
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream(acodec, rate=48000)
        audio.layout = "mono"
        for i in range(fps * seconds):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        n = 48000 * seconds
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)[None]
        fmt = audio.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=48000)
        for k in range(0, n, 960):
            part = av.AudioFrame.from_ndarray(tone[:, k:k + 960].copy(), format="fltp", layout="mono")
            part.sample_rate, part.pts = 48000, k
            for f in resampler.resample(part):
                out.mux(audio.encode(f))
        out.mux(audio.encode(None))
    return path


def describe(path: Path) -> dict:
    """What a test compares: frames (decoded), rate, size, the audio streams (codec, sample
    rate) and the container title."""
    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        return {"frames": sum(1 for _ in box.decode(vs)), "rate": vs.average_rate,
                "size": (vs.codec_context.width, vs.codec_context.height),
                "audio": [(s.codec_context.name, s.sample_rate) for s in box.streams.audio],
                "title": box.metadata.get("title")}
