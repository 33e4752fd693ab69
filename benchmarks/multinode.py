"""What crossing nodes costs a training job, and how long a job takes to recover from losing a node.

1. The same 2-worker nafnet job (1 CPU a worker, 64 px, batch 8) on the head alone (PACK: both
   workers on one node), then with a second node joined (`stack join --num-cpus 2`, on this
   machine, its own state dir) and `--spread` (one worker a node: DDP's all-reduce crosses
   nodes); steady samples/s of each, side by side.
2. A spread job whose joined node's raylet is SIGKILLed once Ray Train holds a checkpoint and a
   worker runs there: seconds from the kill until the job trains past the step it had reached
   (the restart from the checkpoint, the lost steps trained again), and the steps lost.

    python benchmarks/multinode.py [--steps 120]

On one machine both nodes share its cores, so row 1 measures Ray's and DDP's cost of two nodes
(placement, gloo over TCP), not a second machine's extra CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402
from benchmarks.train_throughput import steady_rate  # noqa: E402

DATASET = "bench-paired"
JOIN_CPUS = 2


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "img2img"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)


def join(settings, root: Path) -> dict:
    """`stack join` a worker node of JOIN_CPUS CPUs under state dir `root` -> its env."""
    keys = json.loads((settings.state_path / "credentials.json").read_text())
    env = {**os.environ, "IMG2IMG_STATE_DIR": str(root), "IMG2IMG_S3_ACCESS_KEY": keys["access_key"],
           "IMG2IMG_S3_SECRET_KEY": keys["secret_key"]}
    env.pop("RAY_AUTH_TOKEN", None)
    r = cli(env, "stack", "join", "--head", settings.ray_address, "--num-cpus", str(JOIN_CPUS),
            "--token-file", str(settings.ray_token_path))
    if r.returncode:
        raise RuntimeError(f"stack join failed: {r.stdout}{r.stderr}")
    return env


def submit(settings, steps: int, spread: bool, name: str) -> dict:
    from jobs.training.client import submit as submit_job
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=DATASET, variant="nafnet", workers=2, cpus_per_worker=1.0, batch_size=8, image_size=64,
                     max_steps=steps, epochs=10_000, checkpoint_every="20", log_every=1, spread=spread,
                     experiment="benchmarks", model_name=name, keep_checkpoints=1)
    return submit_job(spec, settings)


def rate(settings, steps: int, spread: bool) -> float:
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client

    out = submit(settings, steps, spread, "bench-multinode")
    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"the {'spread' if spread else 'one-node'} job failed: img2img jobs logs {out['job_id']}")
    return steady_rate(MlflowClient(settings.mlflow_uri).get_metric_history(out["run_id"], "samples"))


def recovery(settings, root: Path, steps: int) -> dict:
    """Kill the joined node under a spread job -> {"recover_s", "steps_lost", "restored", "status"}."""
    import psutil
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client
    from registry.tracking import TAG_CHECKPOINT, TAG_STARTS

    ml = MlflowClient(settings.mlflow_uri)
    out = submit(settings, steps, True, "bench-multinode-loss")
    temp = json.loads((root / "stack.json").read_text())["ray_temp_dir"]
    raylet = next(p for p in psutil.process_iter(["cmdline"])
                  if "raylet" in " ".join(p.info["cmdline"] or []) and temp in " ".join(p.info["cmdline"] or []))
    deadline = time.time() + 900
    while time.time() < deadline:
        run = ml.get_run(out["run_id"])
        step, held = int(run.data.metrics.get("step", 0)), run.data.tags.get(TAG_CHECKPOINT)
        on_node = any("RayTrainWorker" in " ".join(c.cmdline()) for c in raylet.children(recursive=True))
        if held and on_node:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("no checkpoint held with a worker on the joined node within 15 minutes")
    killed_at, step_at_kill = time.time(), step
    os.kill(raylet.pid, signal.SIGKILL)
    back = None
    while time.time() < killed_at + 900:
        run = ml.get_run(out["run_id"])
        if int(run.data.tags.get(TAG_STARTS, "1")) >= 2 and int(run.data.metrics.get("step", 0)) > step_at_kill:
            back = time.time()
            break
        time.sleep(0.5)
    status = wait(job_client(settings), out["job_id"], follow=False)
    restored = ml.get_run(out["run_id"]).data.tags.get("img2img.restored_step", "none")
    return {"recover_s": (back - killed_at) if back else float("nan"), "step_at_kill": step_at_kill,
            "held": int(held), "restored": restored, "status": status}


def main() -> None:
    from cluster.storage import Storage
    from jobs.data.ingest import IngestOptions, ingest
    from registry.manifest import manifest_key

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    settings = settings_with_stack()
    if not Storage(settings).exists(manifest_key(DATASET)):
        ingest(None, IngestOptions(name=DATASET, size=64, crops=16, val_fraction=0.05), settings)
    one = rate(settings, args.steps, spread=False)
    root = Path(tempfile.mkdtemp(prefix="img2img-node2-")) / "state"
    env = join(settings, root)
    try:
        two = rate(settings, args.steps, spread=True)
        loss = recovery(settings, root, args.steps)
    finally:
        cli(env, "stack", "leave", timeout=120)
    rows = [["2 workers on one node (head)", f"{one:.1f}", "1.00", ""],
            ["2 workers spread over 2 nodes (head + joined)", f"{two:.1f}", f"{two / one:.2f}", "DDP across nodes"],
            ["joined node SIGKILLed mid-run", "-", "-",
             f"{loss['status']}; trained past step {loss['step_at_kill']} again {loss['recover_s']:.0f} s after the "
             f"kill; restored step {loss['restored']} (held at the kill: {loss['held']})"]]
    report("multinode", "One node vs two, and a node lost (nafnet, 2 workers x 1 CPU, 64 px, batch 8)",
           ["run", "samples/s", "vs one node", "detail"], rows,
           notes=f"{args.steps} steps a job; steady samples/s from the run's `samples` history. Both nodes on this "
                 "machine share its cores: the ratio is the cost of crossing nodes, not a second machine's gain.")


if __name__ == "__main__":
    main()
