"""Reliability of the endpoint and the store, one table:

1. DURATION s at concurrency 32 with 256 px images: status counts, p50/p95, images/s;
2. the same with one of 2 replicas SIGKILLed at KILL_AT s, through the retrying client:
   client-visible failures (and the failures it retried);
3. two long requests (one per replica) while the deployment is forced from 2 replicas to 1:
   their statuses;
4. 17 classes of bad input x REPEATS requests: status classes, 5xx count, replica restarts;
5. the object store restarted in the middle of an ingest, then the same command re-run:
   manifest checksum against an uninterrupted ingest, duplicate rows;
6. rollouts (benchmarks/rollout_load.py): the champion's p50/p95 with no rollout, a 20% shadow
   and a 10% canary side by side, saturated and paced at half capacity; a canary whose challenger is SIGKILLed and a promotion, both
   under load: client-visible failures.

Runs against the configured stack (started if it is the embedded one) and a registered model.
Usage: python benchmarks/reliability.py [--model NAME@champion] [--duration 60] [--kill-at 20]
       [--repeats 100] [--concurrency 32] [--long-mp 12] [--only downscale ...]
       [--challenger NAME/VERSION] [--rollout-seconds 30] [--rollout-concurrency 4]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from benchmarks.bad_inputs import bad_inputs  # noqa: E402
from benchmarks.common import percentile, report, run_together, settings_with_stack  # noqa: E402
from benchmarks.rollout_load import ROW_KEYS, rollout_rows  # noqa: E402

NAN = float("nan")
SCENARIOS = ("steady", "kill", "downscale", "bad-input", "store-restart", "rollout")
ROWS = (*SCENARIOS[:-1], *ROW_KEYS)  # the table's rows, in order (rollout gives several)


def _png(h: int, w: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _wait_replicas(settings, n: int, timeout: float = 180) -> list[int]:
    from cluster.services import poll_until
    from serving.deploy import replica_pids

    def settled() -> list[int] | None:
        pids = replica_pids(settings)
        return pids if len(pids) == n else None

    pids = poll_until(settled, timeout, interval_s=2)
    if pids:
        return pids
    raise RuntimeError(f"the enhancer did not reach {n} replicas within {timeout:.0f} s")


def load(settings, duration: float, concurrency: int, retrying: bool, kill_at: float | None = None) -> dict:
    """Closed-loop load: `concurrency` threads posting 256x256 PNGs for `duration` s."""
    import httpx

    from cluster.errors import Img2ImgError
    from serving.client import RetryPolicy, post_enhance

    body = _png(256, 256)
    policy = RetryPolicy() if retrying else RetryPolicy(attempts=1)
    statuses: Counter = Counter()
    latencies: list[float] = []
    retried: list[str] = []
    lock = threading.Lock()
    t_end = time.monotonic() + duration
    killed = []

    def worker():
        with httpx.Client(timeout=httpx.Timeout(300, connect=5)) as client:
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                mine: list[str] = []
                try:
                    post_enhance(client, settings.serve_url, body, "image/png", {}, {}, policy, mine)
                    status = "200"
                except Img2ImgError as e:
                    status = str(e).split(":")[0] if str(e)[:3].isdigit() else "connection error"
                with lock:
                    statuses[status] += 1
                    retried.extend(mine)
                    if status == "200":
                        latencies.append(time.perf_counter() - t0)

    def killer():
        time.sleep(kill_at)
        pids = _wait_replicas(settings, 2, timeout=5)
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    t0 = time.monotonic()
    run_together(worker, concurrency, killer if kill_at is not None else None)
    elapsed = time.monotonic() - t0
    return {"statuses": dict(statuses), "p50_ms": percentile(latencies, 50) * 1e3,
            "p95_ms": percentile(latencies, 95) * 1e3, "rate": statuses["200"] / elapsed,
            "failures": sum(v for k, v in statuses.items() if k != "200"), "retried": len(retried),
            "retried_kinds": dict(Counter(retried)), "killed": killed}


def forced_downscale(settings, model: str, megapixels: float = 12.0) -> dict:
    """Two long requests (one on each of 2 replicas), then the deployment is cut to 1 replica.
    The photos are `megapixels` MP (4:3) so each request outlasts Serve's default 20 s grace."""
    import httpx

    from serving.deploy import deploy
    from serving.options import Scaling

    out = deploy(settings, model, scaling=Scaling(min_replicas=2, max_replicas=2), wait_s=300)
    _wait_replicas(settings, 2)
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    big = _png(height, int(round(height * 4 / 3)), seed=1)
    results: dict = {}

    def one(i: int):
        t0 = time.perf_counter()
        r = httpx.post(settings.serve_url + "/enhance", content=big, headers={"Content-Type": "image/png"},
                       params={"tile": 256}, timeout=900)
        results[i] = (r.status_code, time.perf_counter() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.5)
    time.sleep(3)
    deploy(settings, model, scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=0)
    for t in threads:
        t.join()
    _wait_replicas(settings, 1, timeout=300)
    return {"statuses": [results[i][0] for i in sorted(results)],
            "seconds": [round(results[i][1], 1) for i in sorted(results)],
            "graceful_shutdown_timeout_s": out["graceful_shutdown_timeout_s"], "megapixels": megapixels,
            "request_timeout_s": out["request_timeout_s"]}


def bad_input_storm(settings, repeats: int) -> dict:
    import httpx

    from serving.deploy import replica_pids

    before = set(replica_pids(settings))
    cases = bad_inputs()
    per_case: dict[str, Counter] = {}

    def send(name_case):
        name, case = name_case
        with httpx.Client(timeout=120) as client:
            r = client.post(settings.serve_url + "/enhance", content=case["content"], files=case["files"],
                            params=case["params"], headers={} if case["files"] else {"Content-Type": case["ctype"]})
        return name, r.status_code

    jobs = [(n, c) for n, c in cases.items() for _ in range(repeats)]
    with ThreadPoolExecutor(8) as pool:
        for name, status in pool.map(send, jobs):
            per_case.setdefault(name, Counter())[status] += 1
    after = set(replica_pids(settings))
    classes = Counter()
    for counts in per_case.values():
        for status, n in counts.items():
            classes[f"{status // 100}xx"] += n
    wrong = {n: dict(c) for n, c in per_case.items() if set(c) != {cases[n]["status"]}}
    return {"requests": len(jobs), "classes": dict(classes), "5xx": classes.get("5xx", 0),
            "replica_restarts": len(before - after), "unexpected": wrong}


def _ingest_cmd(name: str) -> list[str]:
    return [sys.executable, "-m", "img2img_cli", "data", "ingest", "--sample", "--name", name, "--size", "96",
            "--crops", "12", "--shard-rows", "8", "--workers", "1"]


def store_restart_mid_ingest(settings) -> dict:
    import pyarrow.parquet as pq

    from cluster.stack import Stack
    from cluster.storage import Storage
    from registry.manifest import dataset_prefix, read_manifest

    storage = Storage(settings)
    for name in ("rel-interrupted", "rel-reference"):
        if storage.list(dataset_prefix(name)):
            storage.delete_prefix(dataset_prefix(name))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(_ingest_cmd("rel-interrupted"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not storage.list(dataset_prefix("rel-interrupted") + "_ingest/") and time.time() < deadline:
        time.sleep(0.5)
    stack = Stack(settings)
    procs = stack._group(stack._load()["pids"].get("s3"))
    t_stop = time.monotonic()
    stack._terminate(procs)
    first_out, _ = proc.communicate(timeout=600)
    first = {"exit": proc.returncode, "seconds_after_stop": round(time.monotonic() - t_stop, 1),
             "message": (first_out.strip().splitlines() or [""])[-1][:160]}
    stack.up()
    rerun = subprocess.run(_ingest_cmd("rel-interrupted"), env=env, capture_output=True, text=True, timeout=900)
    reference = subprocess.run(_ingest_cmd("rel-reference"), env=env, capture_output=True, text=True, timeout=900)
    a, b = read_manifest(storage, "rel-interrupted"), read_manifest(storage, "rel-reference")
    keys: list[str] = []
    for split, shards in a.splits.items():
        for s in shards:
            data = storage.get_bytes(dataset_prefix("rel-interrupted") + s.path)
            keys += [f"{split}/{k}" for k in pq.read_table(io.BytesIO(data), columns=["key"]).column("key").to_pylist()]
    for name in ("rel-interrupted", "rel-reference"):
        storage.delete_prefix(dataset_prefix(name))
    return {"first_run": first, "rerun_exit": rerun.returncode, "reference_exit": reference.returncode,
            "same_checksum": a.sha256 == b.sha256, "rows": len(keys), "duplicate_rows": len(keys) - len(set(keys)),
            "manifest_rows": sum(a.counts.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo-photos-nafnet@champion")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--kill-at", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--long-mp", type=float, default=12.0, help="size of the downscale scenario's photos")
    parser.add_argument("--challenger", help="the rollout rows' challenger (default: a copy of the champion)")
    parser.add_argument("--rollout-seconds", type=float, default=30)
    parser.add_argument("--rollout-concurrency", type=int, default=4)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append",
                        help="run these scenarios; the table keeps the other rows of the last full run")
    args = parser.parse_args()
    settings = settings_with_stack()
    from serving.deploy import deploy
    from serving.options import Scaling

    deploy(settings, args.model, scaling=Scaling(min_replicas=2, max_replicas=2), wait_s=300)
    _wait_replicas(settings, 2)
    c, d = args.concurrency, args.duration
    only = set(args.only or SCENARIOS)
    rows = _previous_rows() if args.only else {}
    if "steady" in only:
        steady = load(settings, d, c, retrying=False)
        print("steady:", steady, flush=True)
        rows["steady"] = [f"{d:.0f} s at c={c}, 256 px, 2 replicas, plain client", str(steady["statuses"]),
                          steady["p50_ms"], steady["p95_ms"], steady["rate"], steady["failures"]]
    if "kill" in only:
        _wait_replicas(settings, 2)
        killed = load(settings, d, c, retrying=True, kill_at=args.kill_at)
        print("kill:", killed, flush=True)
        rows["kill"] = [f"same, 1 of 2 replicas SIGKILLed at {args.kill_at:.0f} s, retrying client",
                        f"{killed['statuses']}; retried {killed['retried']} {killed['retried_kinds']}",
                        killed["p50_ms"], killed["p95_ms"], killed["rate"], killed["failures"]]
    if "downscale" in only:
        down = forced_downscale(settings, args.model, args.long_mp)
        print("downscale:", down, flush=True)
        rows["downscale"] = [f"2 long requests ({args.long_mp:g} MP) while forced from 2 replicas to 1",
                             f"statuses {down['statuses']} after {down['seconds']} s; graceful shutdown "
                             f"{down['graceful_shutdown_timeout_s']:.0f} s (Serve's default: 20 s)", NAN, NAN, NAN,
                             sum(s != 200 for s in down["statuses"])]
    if "bad-input" in only:
        bad = bad_input_storm(settings, args.repeats)
        print("bad input:", bad, flush=True)
        rows["bad-input"] = [f"{len(bad_inputs())} bad-input classes x {args.repeats}", f"{bad['classes']}; replica restarts "
                             f"{bad['replica_restarts']}; wrong status: {bad['unexpected'] or 'none'}", NAN, NAN,
                             NAN, bad["5xx"]]
    if "store-restart" in only:
        ingest = store_restart_mid_ingest(settings)
        print("ingest:", ingest, flush=True)
        rows["store-restart"] = [
            "object store stopped mid-ingest, restarted, same command re-run",
            f"first run exit {ingest['first_run']['exit']} {ingest['first_run']['seconds_after_stop']} s after "
            f"the stop ({ingest['first_run']['message']!r}); re-run exit {ingest['rerun_exit']}; checksum "
            f"{'identical' if ingest['same_checksum'] else 'DIFFERENT'} to an uninterrupted ingest; "
            f"{ingest['rows']} rows, {ingest['duplicate_rows']} duplicates", NAN, NAN, NAN,
            int(not ingest["same_checksum"]) + ingest["duplicate_rows"]]
    if "rollout" in only:
        load_before = os.getloadavg()[0]
        rows.update(rollout_rows(settings, args.model, args.challenger, args.rollout_seconds,
                                 args.rollout_concurrency, _png(256, 256)))
    deploy(settings, args.model)  # back to the standard 1-2 replica deployment
    notes = (f"Model {args.model}; duration {d:.0f} s (the full run is 60 s at c=32, kill at 20 s, "
             f"100 repeats). 'failures' = requests the client saw fail (after retries where it retries).")
    if "rollout" in only:  # other work on the machine moves these rows most: say how busy it was
        notes += (f" Rollout rows: {args.rollout_seconds:.0f} s each at c={args.rollout_concurrency}, 256 px; "
                  f"1-minute load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    report("reliability", "Reliability: load, replica loss, planned downscale, bad input, store restart",
           ["scenario", "outcome", "p50 ms", "p95 ms", "images/s", "failures"],
           [rows[k] for k in ROWS if k in rows], notes)


def _previous_rows() -> dict:
    """The last run's rows by scenario (for --only), from benchmarks/out/reliability.json."""
    import json

    path = Path(__file__).resolve().parent / "out" / "reliability.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    # a full run, one from before the 1-replica paced rows, one from before any rollout row, or an
    # `--only rollout` run with or without the 1-replica rows (told apart by their row count)
    for keys in (ROWS, ROWS[:-2], SCENARIOS[:-1], ROW_KEYS, ROW_KEYS[:-2]):
        if len(rows) == len(keys):
            return dict(zip(keys, rows))
    return {}


if __name__ == "__main__":
    main()
