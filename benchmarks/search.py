"""Does a hyper-parameter search pay for its CPU time? An 8-trial ASHA search (`img2img tune`)
over nafnet's recipe vs nafnet's hand-tuned default (EMA 0.999, D4, lr 2e-3), both given the same
CPU-minutes of training, both scored on the same held-out photos (Gaussian blur sigma 1.5, the
`quality.py` set: PSNR of the pooled MSE, mean SSIM).

Usage: python benchmarks/search.py [--cpu-minutes 30] [--trials 8]
The default trains on 1 worker x 1 CPU for the whole budget. The search runs its trials one at
a time on 1 worker x 1 CPU each, under a whole-search `--time-budget` of the same minutes
(start-up and validation of every trial count against it); each trial may run as many steps
as the default took, reporting every eighth of that, ASHA (first rung there, `--reduction-factor
2`) stopping the ones behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402
from benchmarks.quality import SIGMA, ensure, held_out_photos, model_fn, score, to_8bit  # noqa: E402

DATASET = "quality-g15"
SPACE = ["lr=loguniform(5e-4,4e-3)", "ema_decay=choice(0,0.99,0.999)", "augment=choice(hflip,d4)",
         "beta2=choice(0.9,0.99)"]
COMMON = dict(dataset=DATASET, variant="nafnet", workers=1, cpus_per_worker=1.0, image_size=64,
              experiment="benchmarks", checkpoint_every="auto")


def train_default(settings, minutes: float) -> tuple[str, int]:
    """nafnet's defaults for `minutes` of training on 1 worker x 1 CPU -> (version, steps run)."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(**COMMON, epochs=100_000, time_budget_s=minutes * 60, model_name="bench-search-default")
    out = submit(spec, settings)
    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"the default's training failed: img2img jobs logs {out['job_id']}")
    ml = MlflowClient(settings.mlflow_uri)
    version = next(v for v in ml.search_model_versions("name='bench-search-default'") if v.run_id == out["run_id"])
    steps = int(max(m.value for m in ml.get_metric_history(out["run_id"], "step")))
    return str(version.version), steps


def search(settings, minutes: float, trials: int, steps: int) -> tuple[str, dict, dict]:
    """The ASHA search under a whole-search budget of `minutes` -> (version, best values,
    trials' outcomes counted)."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.search.client import submit
    from jobs.search.spec import SearchSpec
    from jobs.training.client import job_client

    rung = max(1, steps // 8)  # ASHA's first rung, and the reports' cadence so each rung has one
    base = dict(COMMON, max_steps=max(8, steps), model_name="bench-search-best", checkpoint_every=str(rung))
    spec = SearchSpec(base=base, space=SPACE, trials=trials, scheduler="asha", max_concurrent=1,
                      grace_steps=rung, reduction_factor=2, time_budget_s=minutes * 60)
    out = submit(spec, settings)
    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"the search failed: img2img jobs logs {out['job_id']}")
    run = MlflowClient(settings.mlflow_uri).get_run(out["search_id"])
    counts = {k: int(run.data.metrics.get(f"trials_{k}", 0)) for k in ("finished", "stopped_early", "failed")}
    return run.data.tags["registered_version"], run.data.tags.get("best_params", ""), counts


def main() -> None:
    from translator import degrade

    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-minutes", type=float, default=30.0, help="training CPU-minutes of each side")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    settings = settings_with_stack()
    ensure(settings, DATASET, f"gaussian:{SIGMA}")
    cleans = held_out_photos(settings, DATASET)
    blurred = [to_8bit(degrade.apply(f"gaussian:{SIGMA}", c, seed=i)) for i, c in enumerate(cleans)]
    minutes = args.cpu_minutes  # 1 worker x 1 CPU on each side
    default_version, steps = train_default(settings, minutes)
    best_version, best_params, counts = search(settings, minutes, args.trials, steps)
    run_default = model_fn(settings, "bench-search-default", default_version)
    run_best = model_fn(settings, "bench-search-best", best_version)
    rows = [["blurred input", "-", "-", *score(blurred, cleans)],
            ["nafnet-tiny default (EMA 0.999, D4, lr 2e-3)", f"{minutes:g}", f"{steps} steps",
             *score([run_default(b) for b in blurred], cleans)],
            [f"best of an {args.trials}-trial ASHA search", f"{minutes:g}",
             f"{best_params}; {counts['finished']} finished, {counts['stopped_early']} stopped early, "
             f"{counts['failed']} failed", *score([run_best(b) for b in blurred], cleans)]]
    report(f"search_{args.cpu_minutes:g}cpumin", f"Search vs default, same CPU-minutes ({len(cleans)} held-out photos, "
           f"Gaussian sigma {SIGMA})", ["model", "CPU-minutes", "detail", "PSNR dB", "SSIM"], rows,
           notes=f"Space: {' '.join(SPACE)}. Both sides train on 1 worker x 1 CPU; the search's budget covers its "
                 "trials' start-up and validation too.")


if __name__ == "__main__":
    main()
