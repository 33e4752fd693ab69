"""The rollout rows of benchmarks/reliability.py: the champion's latency under the same
closed-loop load (the endpoint saturated) with no rollout, a 20% shadow and a 10% canary, and
paced at half the measured capacity (an endpoint with CPU to spare, as one runs) with no
rollout and a 20% shadow, measured back to back in one run; then a canary whose challenger
replica is SIGKILLed under load, and a promotion under load (client-visible failures).

The challenger is `--challenger NAME/VERSION`, or else a copy of the champion's weights
registered as a new version of the same model (tagged `benchmark`), so both versions cost the
same and the difference is what the rollout adds. On a machine whose CPUs the challenger shares
with the champion, a shadow's mirrored requests compete with the champion's for them: that is
the overhead measured."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

from benchmarks.common import percentile, run_together

ROW_KEYS = ("rollout-none", "rollout-none-paced", "rollout-shadow-equal", "rollout-shadow", "rollout-shadow-paced",
            "rollout-canary", "rollout-canary-kill", "rollout-promote", "rollout-none-paced-1", "rollout-shadow-paced-1")
PACED_SHARE = 0.5  # the paced rows send at this share of the closed loop's measured capacity


def copy_of_champion(settings, model: str) -> str:
    """Register the champion's weights again as a new version of its model -> "NAME/VERSION"."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from registry.refs import resolve

    mlflow.set_tracking_uri(settings.mlflow_uri)
    name, version = resolve(settings.mlflow_uri, model)
    c = MlflowClient(settings.mlflow_uri)
    src = c.get_model_version(name, version)
    new = mlflow.register_model(src.source, name, tags={**(src.tags or {}),  # the same logged model again
                                                        "benchmark": f"rollout challenger: a copy of v{version}"})
    return f"{name}/{new.version}"


def load(url: str, body: bytes, seconds: float, concurrency: int, during=None, rate: float | None = None) -> dict:
    """`concurrency` threads posting `body` for `seconds` (and `during()` run once in another
    thread) -> {n, failures, statuses, p50_ms/p95_ms per answering version, share per version}.
    Closed loop (each thread sends its next request when the last is answered), or paced at
    `rate` requests/s in all (each thread on its own fixed schedule, staggered; a late answer
    makes the next request late, not the schedule denser): an endpoint below its capacity."""
    import httpx

    answers: list[tuple[str, str | None, float]] = []
    lock = threading.Lock()
    t_start = time.monotonic()
    t_end = t_start + seconds
    slots = iter(range(concurrency))

    def worker():
        with lock:
            slot = next(slots)
        interval = concurrency / rate if rate else 0.0
        due = t_start + slot * interval / concurrency
        with httpx.Client(timeout=300) as client:
            while time.monotonic() < t_end:
                if rate:
                    time.sleep(max(0.0, due - time.monotonic()))
                    due += interval
                t0 = time.perf_counter()
                try:
                    r = client.post(url + "/enhance", content=body, headers={"Content-Type": "image/png"})
                    got = (str(r.status_code), r.headers.get("x-model-version"), time.perf_counter() - t0)
                except httpx.HTTPError as e:
                    got = (type(e).__name__, None, 0.0)
                with lock:
                    answers.append(got)

    run_together(worker, concurrency, during)
    ok = [a for a in answers if a[0] == "200"]
    by_version = {v: [s for _, vv, s in ok if vv == v] for v in {v for _, v, _ in ok}}
    return {"n": len(answers), "failures": len(answers) - len(ok), "statuses": dict(Counter(a[0] for a in answers)),
            "ms": {v: (percentile(s, 50) * 1e3, percentile(s, 95) * 1e3) for v, s in by_version.items()},
            "share": {v: len(s) / max(1, len(ok)) for v, s in by_version.items()}, "rate": len(ok) / seconds}


def rollout_rows(settings, model: str, challenger: str | None, seconds: float, concurrency: int, body: bytes) -> dict:
    """The rows (ROW_KEYS) as [scenario, outcome, p50 ms, p95 ms, images/s, failures]."""
    from registry.refs import resolve
    from serving.configs import CHALLENGER_APP
    from serving.deploy import deploy, replica_pids
    from serving.rollouts import end, start, status

    challenger = challenger or copy_of_champion(settings, model)
    champion = resolve(settings.mlflow_uri, model)[1]
    url = settings.serve_url.rstrip("/")
    rows: dict[str, list] = {}

    def row(key: str, label: str, r: dict, extra: str = ""):
        p50, p95 = r["ms"].get(champion, (float("nan"), float("nan")))
        rows[key] = [label, f"{r['statuses']}; share by version {({v: round(s, 2) for v, s in r['share'].items()})}"
                     f"{extra}", p50, p95, r["rate"], r["failures"]]
        print(key, r, flush=True)

    r = load(url, body, seconds, concurrency)
    row("rollout-none", f"champion v{champion} alone, {seconds:.0f} s at c={concurrency} (p50/p95: the champion's)", r)
    rate = PACED_SHARE * r["rate"]
    paced = f"paced at {rate:.0f} requests/s ({PACED_SHARE:.0%} of the closed loop's capacity)"
    row("rollout-none-paced", f"champion v{champion} alone, {paced}", load(url, body, seconds, concurrency, rate=rate))
    for key, background in (("rollout-shadow-equal", False), ("rollout-shadow", True)):
        start(settings, "shadow", challenger, sample=0.2, background=background)
        r = load(url, body, seconds, concurrency)
        st = status(settings)
        how = "its challenger under SCHED_IDLE (the default)" if background else "its challenger at the champion's priority"
        row(key, f"same, shadow of {challenger} at 20% sampling, {how}", r,
            f"; {st['comparison']['pairs']} mirrored, challenger p50 {(st['challenger']['p50_s'] or 0) * 1e3:.0f} ms")
        if background:
            before = st["comparison"]["pairs"]
            r = load(url, body, seconds, concurrency, rate=rate)
            st = status(settings)
            row("rollout-shadow-paced", f"same shadow (SCHED_IDLE), {paced}", r,
                f"; {st['comparison']['pairs'] - before} mirrored, challenger p50 "
                f"{(st['challenger']['p50_s'] or 0) * 1e3:.0f} ms")
        end(settings, "abort")
    start(settings, "canary", challenger, percent=10)
    r = load(url, body, seconds, concurrency)
    row("rollout-canary", f"same, canary of {challenger} at 10%", r,
        f"; challenger p50 {r['ms'].get(challenger.split('/')[-1], (float('nan'),))[0]:.0f} ms")

    def kill():
        time.sleep(seconds / 3)
        for pid in replica_pids(settings, CHALLENGER_APP):
            os.kill(pid, signal.SIGKILL)

    r = load(url, body, seconds, concurrency, during=kill)
    row("rollout-canary-kill", f"same canary, every challenger replica SIGKILLed at {seconds / 3:.0f} s", r,
        f"; {status(settings)['fallbacks']} answered by the champion instead")
    end(settings, "abort")  # the kill may have aborted it (latency); promote a fresh canary
    start(settings, "canary", challenger, percent=10)
    promoted: list[str] = []
    r = load(url, body, seconds, concurrency,
             during=lambda: (time.sleep(seconds / 4), promoted.append(end(settings, "promote")["state"])))
    row("rollout-promote", f"`rollout promote` under the same load ({promoted[0] if promoted else 'not done'})", r)
    if promoted:  # the registry's champion back to the one before (as `models rollback` does), and served
        from registry.models import rollback

        rollback(settings, resolve(settings.mlflow_uri, model)[0])
    rows.update(paced_on_one_replica(settings, model, challenger, champion, url, body, seconds, concurrency))
    deploy(settings, model)
    return rows


def paced_on_one_replica(settings, model: str, challenger: str, champion: str, url: str, body: bytes,
                         seconds: float, concurrency: int, rounds: int = 2) -> dict:
    """The paced rows again with ONE champion replica, which is what the standard deployment
    (1-2 replicas, the autoscaler aiming at 2 ongoing requests a replica) settles at under half its load: no rollout and a 20%
    SCHED_IDLE shadow, interleaved for `rounds` rounds (the champion's p50/p95 averaged over
    them). -> rows "rollout-none-paced-1" and "rollout-shadow-paced-1"."""
    from serving.deploy import deploy
    from serving.options import Scaling
    from serving.rollouts import end, start, status

    deploy(settings, model, scaling=Scaling(min_replicas=1, max_replicas=1), wait_s=300)
    load(url, body, 5, concurrency)  # warm
    rate = PACED_SHARE * load(url, body, seconds / 2, concurrency)["rate"]
    runs: dict[str, list[dict]] = {"none": [], "shadow": []}
    mirrored = 0
    for _ in range(rounds):
        runs["none"].append(load(url, body, seconds, concurrency, rate=rate))
        start(settings, "shadow", challenger, sample=0.2, background=True)
        runs["shadow"].append(load(url, body, seconds, concurrency, rate=rate))
        mirrored += status(settings)["comparison"]["pairs"]
        end(settings, "abort")
    rows = {}
    for key, label, extra in (
            ("none", f"champion v{champion} alone, 1 replica, paced at {rate:.0f} requests/s ({PACED_SHARE:.0%} of "
                     f"its capacity), {rounds} rounds interleaved with the next row", ""),
            ("shadow", f"same, 1 replica, shadow of {challenger} at 20% sampling under SCHED_IDLE", f"; {mirrored} mirrored")):
        rs = runs[key]
        p50, p95 = (sum(r["ms"].get(champion, (float("nan"),) * 2)[i] for r in rs) / len(rs) for i in (0, 1))
        statuses = sum((Counter(r["statuses"]) for r in rs), Counter())
        rows[f"rollout-{key}-paced-1"] = [label, f"{dict(statuses)}{extra}", p50, p95,
                                          sum(r["rate"] for r in rs) / len(rs), sum(r["failures"] for r in rs)]
        print(key, "1 replica", rows[f"rollout-{key}-paced-1"], flush=True)
    return rows
