"""Why a training job's step is slower than the bare loop's, without Ray: the variant
built as `benchmarks/train_throughput.py` builds it (same precision and memory format, 1 thread),
its `training_step` timed with and without each way the job's step differs from the bare loop's.

Factors (a case is a comma-separated set of them; "bare" is none):
- thread: the steps run in a non-main thread, as Ray Train runs `train_loop_per_worker`;
- fresh: a new batch tensor every step (cut from numpy like `jobs.training.worker.cycle_batches`)
  instead of one batch reused;
- sched: built with `device=torch.device("cpu")` and `set_total_steps` (the LR schedule runs);
- imports: ray, ray.train.torch, pyarrow and mlflow imported first (the worker process has them);
- retain: `translator.allocator.retain_freed_memory()` first;
- arena1: the process started with MALLOC_ARENA_MAX=1 (every thread allocates from glibc's main
  heap, as the main thread does).

Each case runs in its own process (glibc malloc settings are per process and only ever change
one way); the cases are interleaved over `--repeats` rounds and each measure's best round counts. Printed:
wall ms per step, the stepping thread's CPU ms per step (what other processes' load leaves
alone) and minor page faults per step.

    python benchmarks/step_gap.py --variants pix2pix --cases bare,thread,thread+retain --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_throughput import CASES, WARMUP_STEPS  # noqa: E402

FACTORS = ("thread", "fresh", "sched", "imports", "retain", "arena1")


def one(variant: str, factors: set[str], steps: int) -> dict:
    """Time `steps` training steps after WARMUP_STEPS in this process -> {"ms", "faults"} per step."""
    if "imports" in factors:
        import mlflow  # noqa: F401
        import pyarrow  # noqa: F401
        import ray.train.torch  # noqa: F401
    if "retain" in factors:
        from translator.allocator import retain_freed_memory

        retain_freed_memory()
    import numpy as np
    import torch

    from translator.precision import training_precision
    from translator.variants import build_variant

    torch.set_num_threads(1)
    case = CASES[variant]
    amp, channels_last = training_precision("auto", "cpu")
    kwargs = {"device": torch.device("cpu")} if "sched" in factors else {}
    v = build_variant(variant, case["config"], amp=amp, channels_last=channels_last, **kwargs)
    if "sched" in factors:
        v.set_total_steps(WARMUP_STEPS + steps)
    keys = ["input", "target"] if v.paired else ["a", "b"]
    b = case["batch"]
    rng = np.random.default_rng(0)
    pool = {k: rng.random((8 * b, 3, 64, 64), dtype=np.float32) * 2 - 1 for k in keys}
    fixed = {k: torch.from_numpy(pool[k][:b].copy()) for k in keys}

    def batch(i: int) -> dict:
        if "fresh" not in factors:
            return fixed
        j = (i % 8) * b
        return {k: torch.from_numpy(np.ascontiguousarray(np.concatenate([pool[k][j:j + b]]))) for k in keys}

    out: dict = {}

    def loop() -> None:
        w0 = time.perf_counter()
        for i in range(WARMUP_STEPS):
            v.training_step(batch(i))
        out["warm_ms"] = 1000 * (time.perf_counter() - w0) / WARMUP_STEPS  # a job's time_step_s counts these too
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(steps):
            v.training_step(batch(i))
        out["ms"] = 1000 * (time.perf_counter() - t0) / steps
        out["cpu_ms"] = 1000 * (time.thread_time() - c0) / steps  # robust to other processes' load
        out["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps

    if "thread" in factors:
        t = threading.Thread(target=loop)
        t.start()
        t.join()
    else:
        loop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(CASES))
    p.add_argument("--cases", default="bare,thread+fresh+sched+imports,thread,thread+retain,"
                                      "thread+fresh+sched+imports+retain")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        factors = set() if a.one[1] == "bare" else set(a.one[1].split("+"))
        if factors - set(FACTORS):
            raise SystemExit(f"unknown factors {factors - set(FACTORS)}; use {FACTORS}")
        print(json.dumps(one(a.one[0], factors, a.steps)))
        return
    cases = a.cases.split(",")
    for variant in a.variants.split(","):
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            for case in cases:
                env = {**os.environ, **({"MALLOC_ARENA_MAX": "1"} if "arena1" in case.split("+") else {})}
                r = json.loads(subprocess.run([sys.executable, __file__, "--one", variant, case, "--steps",
                                               str(a.steps)], check=True, capture_output=True, text=True,
                                              env=env).stdout.strip().splitlines()[-1])
                # each measure's best round (other processes only ever add to it)
                best[case] = {k: min(v, best.get(case, r)[k]) for k, v in r.items()}
        base = best.get("bare", {}).get("ms")
        for case in cases:
            r = best[case]
            rel = f"  x{base / r['ms']:.2f} of bare" if base else ""
            print(f"{variant:12s} {case:36s} {r['ms']:7.1f} ms/step {r['cpu_ms']:7.1f} cpu ms/step "
                  f"{r['faults']:7.0f} faults/step {r['warm_ms']:7.1f} ms/warm-up step{rel}", flush=True)


if __name__ == "__main__":
    main()
