"""What the job queue costs: N training jobs submitted at once through the queue (Ray admits one
at a time, each reserving its whole footprint) vs the same N jobs run one after another by hand
(submit, wait for the end, submit the next). Prints both makespans and their ratio.

    python -m benchmarks.job_queue --jobs 5 --dataset blur

Each job: tiny autoencoder, 2 workers sized so that only one job fits the cluster at a time
(footprint = 2 x cpus-per-worker + 1 data CPU + 0.5 driver CPU: pass --cpus-per-worker so that
two footprints exceed the cluster's CPUs; the default fits a 4-CPU head)."""

from __future__ import annotations

import argparse
import time

from benchmarks.common import report, settings_with_stack


def spec(dataset: str, i: int, cpus_per_worker: float, steps: int):
    from jobs.training.spec import TrainSpec

    return TrainSpec(dataset=dataset, variant="autoencoder", config={"nf": 8}, image_size=64, batch_size=8,
                     max_steps=steps, workers=2, cpus_per_worker=cpus_per_worker, model_name=f"bench-queue-{i}",
                     experiment="bench-queue")


def wait_all(client, ids: list[str]) -> list[str]:
    from jobs.manage import wait

    return [wait(client, job_id, follow=False) for job_id in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--dataset", default="blur", help="an ingested paired dataset")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    settings = settings_with_stack()
    from jobs.training.client import job_client, submit

    client = job_client(settings)
    t0 = time.time()
    by_hand = []
    for i in range(args.jobs):
        by_hand += wait_all(client, [submit(spec(args.dataset, i, args.cpus_per_worker, args.steps), settings)["job_id"]])
    serial_s = time.time() - t0
    t0 = time.time()
    ids = [submit(spec(args.dataset, i, args.cpus_per_worker, args.steps), settings)["job_id"] for i in range(args.jobs)]
    queued = wait_all(client, ids)
    queue_s = time.time() - t0
    ok = all(s == "SUCCEEDED" for s in by_hand + queued)
    report("queue", f"{args.jobs} training jobs: through the queue vs one after another by hand",
           ["jobs", "one after another (s)", "through the queue (s)", "ratio", "all succeeded"],
           [[args.jobs, round(serial_s, 1), round(queue_s, 1), round(queue_s / serial_s, 3), ok]],
           notes=f"2 workers x {args.cpus_per_worker:g} CPUs each, {args.steps} steps, dataset {args.dataset}; "
                 "the queue's makespan includes every submission (made at once, before the first job ends).")


if __name__ == "__main__":
    main()
