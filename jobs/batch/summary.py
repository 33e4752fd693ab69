"""A batch's report: the counts and throughput of its rows, the manifest written in the output
prefix, and the before/after grid of its MLflow run. Pure: no service."""

from __future__ import annotations

import json
from dataclasses import asdict

from PIL import Image

from jobs.batch.spec import BatchSpec
from translator import codec, images

STATUSES = ("written", "skipped", "failed")


def summarise(rows: list[dict], seconds: float) -> dict:
    """Report rows {"key", "size", "out_key", "status", "reason", "seconds"} and the job's wall
    time (s) -> {"files", "written", "skipped", "failed", "seconds", "images_per_s" (outputs
    written per wall second, 0 when none), "failures": [{"key", "reason"}] sorted by key}."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    return {"files": len(rows), **counts, "seconds": round(seconds, 2),
            "images_per_s": round(counts["written"] / seconds, 3) if seconds > 0 and counts["written"] else 0.0,
            "failures": sorted(({"key": r["key"], "reason": r["reason"]} for r in rows if r["status"] == "failed"),
                               key=lambda f: f["key"])}


def manifest_json(spec: BatchSpec, rows: list[dict], summary: dict) -> str:
    """The manifest: the request, the summary's counts and one entry per input (sorted by key)
    with its size (bytes), output key, status, reason and seconds."""
    files = [{k: r[k] for k in ("key", "size", "out_key", "status", "reason", "seconds")}
             for r in sorted(rows, key=lambda r: r["key"])]
    counts = {k: v for k, v in summary.items() if k != "failures"}
    return json.dumps({"spec": asdict(spec), "summary": counts, "files": files}, indent=1)


GRID_FILES = 4  # files in the before/after grid of a batch's MLflow run
GRID_SIDE = 256  # px: the longest side of each picture in it


def before_after(pairs: list[tuple[str, bytes, bytes]], max_pixels: int) -> Image.Image | None:
    """[(key, input bytes, output bytes)] -> an RGB grid, one row per file (before | after, each
    fitted into GRID_SIDE px, 16-bit and alpha shown as 8-bit RGB; each decoded up to
    `max_pixels`); None when no pair can be decoded."""
    rows = []
    for _key, before, after in pairs:
        try:
            row = [images.to_pil(codec.decode(body, max_pixels).tensor) for body in (before, after)]
        except codec.RequestError:
            continue
        for im in row:
            im.thumbnail((GRID_SIDE, GRID_SIDE))
        rows.append(row)
    return images.grid(rows, labels=["before", "after"]) if rows else None
