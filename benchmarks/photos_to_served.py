"""How long from "new photos land in the bucket" to "the endpoint answers with a model trained on
them", with nobody at the keyboard: a schedule (`pipeline schedule --on-new-data s3://...`) on a
prefix, a full pipeline (ingest -> train -> evaluate -> gate -> deploy -> promote) and the served
endpoint. Prints the end-to-end time and where it went (the schedule's poll and debounce, the
pipeline's queueing, each step).

    python benchmarks/photos_to_served.py [--max-steps 60] [--poll 5] [--debounce 10]

Set-up (not timed): 4 sample photos under a fresh prefix, a first pipeline run that makes v1
champion, v1 deployed, the schedule started and its first (all cache hits) run over. Timed: 2
more photos land (t0); the endpoint is asked every 2 s which version answers until it is the new
one (t1). The gate is forced (`gate.force: true`): a tiny model trained for seconds may score
below its champion, and this measures the path, not the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file
from benchmarks.common import report, settings_with_stack  # noqa: E402

MODEL = "bench-landing"


def spec_for(source: str, max_steps: int) -> dict:
    """The pipeline: 64 px pairs of the photos, a tiny autoencoder for `max_steps` steps on 1 worker."""
    return {"name": MODEL, "source": source, "dataset": MODEL, "model": MODEL,
            "ingest": {"degrade": "gaussian:1.5", "size": 64, "crops": 2, "val_fraction": 0.25, "shard_rows": 32},
            "train": {"variant": "autoencoder", "workers": 1, "cpus_per_worker": 1.0, "max_steps": max_steps,
                      "batch_size": 8, "image_size": 64, "set": {"nf": 16}, "experiment": "benchmarks"},
            "evaluate": {"workers": 1, "cpus_per_worker": 1.0}, "gate": {"force": True}}


def served_version(settings, body: bytes) -> str | None:
    import httpx

    try:
        r = httpx.post(settings.serve_url + "/enhance", content=body, headers={"Content-Type": "image/png"},
                       timeout=60)
    except httpx.HTTPError:
        return None
    return r.headers.get("x-model-version") if r.status_code == 200 else None


def runs(settings) -> list:
    from pipelines import record

    return [r for r in record.pipelines(settings.mlflow_uri) if r.name == MODEL]


def wait_for_runs(settings, n: int, timeout_s: float = 1200):
    """-> the newest run once `n` runs of MODEL exist and the newest has ended."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = runs(settings)
        if len(found) >= n and found[0].state not in ("RUNNING", "QUEUED"):
            return found[0]
        time.sleep(2)
    raise RuntimeError(f"no finished pipeline run #{n} of {MODEL} within {timeout_s:.0f}s")


def main() -> None:
    import io

    from PIL import Image

    from cluster.storage import Storage
    from jobs.data.sources import list_sample
    from pipelines import client, schedule
    from pipelines.spec import parse
    from serving.deploy import deploy

    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--poll", type=float, default=5.0, help="the schedule's listing interval, seconds")
    ap.add_argument("--debounce", type=float, default=10.0, help="the schedule's debounce, seconds")
    args = ap.parse_args()
    settings = settings_with_stack()
    store = Storage(settings)
    prefix = f"incoming/{MODEL}-{time.strftime('%Y%m%d-%H%M%S')}/"
    source = f"s3://{settings.bucket}/{prefix}"
    photos = [f for f in list_sample() if f.key.endswith(".png")][:6]
    for f in photos[:4]:
        store.put_bytes(prefix + f.key, Path(f.location).read_bytes())
    before = len(runs(settings))
    client.submit(parse(spec_for(source, args.max_steps)), settings)
    first = wait_for_runs(settings, before + 1)
    if first.state != "FINISHED":
        raise RuntimeError(f"the first pipeline run ended {first.state}: {first.error}")
    deploy(settings, f"{MODEL}@champion", wait_s=300)
    body = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(body, "PNG")
    body = body.getvalue()
    sid = schedule.schedule(parse(spec_for(source, args.max_steps)), settings, on_new_data=source,
                            debounce_s=args.debounce, poll_s=args.poll)
    try:
        wait_for_runs(settings, before + 2)  # the schedule's first look (all cache hits unless the code changed)
        v1 = served_version(settings, body)
        t0 = time.time()
        for f in photos[4:6]:
            store.put_bytes(prefix + f.key, Path(f.location).read_bytes())
        while (now := served_version(settings, body)) in (v1, None):
            if time.time() - t0 > 1800:
                raise RuntimeError(f"the endpoint still serves v{v1} 30 minutes after the photos landed")
            time.sleep(2)
        t1 = time.time()
    finally:
        schedule.unschedule(settings, sid)
    from pipelines import record

    run = record.pipeline(settings.mlflow_uri, wait_for_runs(settings, before + 3).job_id)  # with its steps
    steps = {s.step: s.duration_s or 0.0 for s in run.steps}
    picked_up = run.started - t0
    rows = [["photos land -> the endpoint answers with the new version", f"{t1 - t0:.0f}", f"v{v1} -> v{now}"],
            ["  photos land -> the pipeline run starts (poll + debounce + submit)", f"{picked_up:.0f}",
             f"--poll {args.poll:g} s, --debounce {args.debounce:g} s"]]
    rows += [[f"  {step}", f"{seconds:.0f}", ""] for step, seconds in steps.items()]
    rows.append(["  the rest (pipeline job start, queueing between steps, MLflow records)",
                 f"{(t1 - t0) - picked_up - sum(steps.values()):.0f}", ""])
    report("photos_to_served", "Photos land -> served, unattended (schedule on new data, full pipeline)",
           ["phase", "seconds", "detail"], rows,
           notes=f"Tiny autoencoder (nf 16, 64 px, {args.max_steps} steps, 1 worker x 1 CPU), 4 photos then 2 more; "
                 "the gate forced. Training a real model adds its own training time to the train step.")


if __name__ == "__main__":
    main()
