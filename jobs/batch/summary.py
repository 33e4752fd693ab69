"""A batch's report: the counts and throughput of its rows, and the manifest written in the
output prefix. Pure: no service."""

from __future__ import annotations

import json
from dataclasses import asdict

from jobs.batch.spec import BatchSpec

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
