"""The HTTP client behind `img2img enhance`: parallel requests with clear per-file errors."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster.errors import Img2ImgError

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".gif": "image/gif"}


@dataclass
class Outcome:
    source: Path
    output: Path | None
    error: str | None = None
    model: str = ""


def output_path(src: Path, out_dir: Path, fmt: str) -> Path:
    return out_dir / f"{src.stem}.enhanced.{'jpg' if fmt == 'jpeg' else fmt}"


def enhance_bytes(url: str, data: bytes, content_type: str = "application/octet-stream", fmt: str = "png",
                  api_key: str | None = None, timeout: float = 300) -> tuple[bytes, dict]:
    headers = {"Content-Type": content_type}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        r = httpx.post(url.rstrip("/") + "/enhance", params={"format": fmt}, content=data, headers=headers,
                       timeout=timeout)
    except httpx.HTTPError as e:
        raise Img2ImgError(f"cannot reach the endpoint at {url} ({type(e).__name__}); "
                           "is it deployed? (`img2img serve status`)") from None
    if r.status_code != 200:
        try:
            msg = r.json().get("error") or r.text
        except ValueError:
            msg = r.text
        raise Img2ImgError(f"{r.status_code}: {str(msg)[:300]}")
    return r.content, dict(r.headers)


def enhance_files(files: list[Path], out_dir: Path, url: str, fmt: str = "png", api_key: str | None = None,
                  parallel: int = 4, on_done: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(src: Path) -> Outcome:
        try:
            data, headers = enhance_bytes(url, src.read_bytes(), MEDIA.get(src.suffix.lower(), "application/octet-stream"),
                                          fmt, api_key)
        except (Img2ImgError, OSError) as e:
            return Outcome(src, None, str(e))
        dest = output_path(src, out_dir, fmt)
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)  # never leave a half-written output
        return Outcome(src, dest, None, f"{headers.get('x-model-name')} v{headers.get('x-model-version')}")

    results = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for outcome in pool.map(one, files):
            on_done(outcome)
            results.append(outcome)
    return results
