"""Does a hyper-parameter search pay for its CPU time? nafnet's hand-tuned default (EMA 0.999, D4,
lr 2e-3) against an 8-trial ASHA search (`img2img tune`) over its recipe, both given the same
CPU-minutes, side by side on this machine's 2 cores (1 worker, one core each), both scored on the
same held-out photos (Gaussian blur sigma 1.5, the `quality.py` set: PSNR of the pooled MSE, mean
SSIM).

Usage: python benchmarks/search.py [--cpu-minutes 30] [--trials 8] [--search-share 0.34]

The default trains for the whole budget. The search side spends `--search-share` of it on the
search (a whole-search `--time-budget`: every trial's start-up and validation count), its trials
short enough that all of them run (ASHA's async rungs keep the first trial at each rung, so with
one trial at a time long trials would eat the budget), then trains the search's best version on
for the rest of the budget with its values (`train --init-from`), as a team would. Both the
search's best and the trained-on model are rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402
from benchmarks.quality import SIGMA, ensure, held_out_photos, model_fn, score, to_8bit  # noqa: E402

DATASET = "quality-g15"
SPACE = ["lr=loguniform(5e-4,4e-3)", "ema_decay=choice(0,0.99,0.999)", "augment=choice(hflip,d4)",
         "beta2=choice(0.9,0.99)"]
# 0.5 admitted CPUs a worker so that both sides fit the local stack's admission (4 CPUs) at once;
# each side's one training thread then has one of the machine's 2 cores.
COMMON = dict(dataset=DATASET, variant="nafnet", workers=1, cpus_per_worker=0.5, image_size=64,
              experiment="benchmarks", checkpoint_every="auto")
STEPS_PER_CPU_MINUTE = 190  # nafnet-tiny, 64 px, batch 8, 1 CPU, bf16 (measured: 1915 steps in 10 min)


def submit_train(settings, model_name: str, minutes: float, **extra) -> dict:
    from jobs.training.client import submit
    from jobs.training.spec import TrainSpec

    return submit(TrainSpec(**COMMON, epochs=100_000, time_budget_s=minutes * 60, model_name=model_name, **extra),
                  settings)


def finished(settings, out: dict, model_name: str, what: str) -> tuple[str, int]:
    """Wait for a training job -> (its registered version, steps run)."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client

    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"{what} failed: img2img jobs logs {out['job_id']}")
    ml = MlflowClient(settings.mlflow_uri)
    version = next(v for v in ml.search_model_versions(f"name='{model_name}'") if v.run_id == out["run_id"])
    steps = int(max(m.value for m in ml.get_metric_history(out["run_id"], "step")))
    return str(version.version), steps


def search(settings, minutes: float, trials: int) -> tuple[str, dict, dict, int]:
    """The ASHA search under a whole-search budget of `minutes` -> (version, best values, trials'
    outcomes counted, the trials' step cap)."""
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.search.client import submit
    from jobs.search.spec import SearchSpec
    from jobs.training.client import job_client

    # ASHA (reduction factor 2, rungs r, 2r, 4r) costs about 17 r steps for 8 trials run one at a
    # time; the rest of the budget goes to the trials' start-ups and validations.
    cap = max(16, int(minutes * STEPS_PER_CPU_MINUTE * 0.6 / (17 / 8 * trials) * 4))
    rung = max(4, cap // 4)
    base = dict(COMMON, max_steps=cap, model_name="bench-search-best", checkpoint_every=str(rung))
    spec = SearchSpec(base=base, space=SPACE, trials=trials, scheduler="asha", max_concurrent=1,
                      grace_steps=rung, reduction_factor=2, time_budget_s=minutes * 60)
    out = submit(spec, settings)
    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"the search failed: img2img jobs logs {out['job_id']}")
    run = MlflowClient(settings.mlflow_uri).get_run(out["search_id"])
    counts = {k: int(run.data.metrics.get(f"trials_{k}", 0)) for k in ("finished", "stopped_early", "failed")}
    return run.data.tags["registered_version"], json.loads(run.data.tags.get("best_params") or "{}"), counts, cap


def main() -> None:
    from translator import degrade

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-minutes", type=float, default=30.0, help="CPU-minutes of each side (1 CPU each)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--search-share", type=float, default=0.34,
                        help="the share of the search side's budget spent searching; the rest trains its best on")
    args = parser.parse_args()
    if not 0 < args.search_share <= 1:
        parser.error(f"--search-share must be in (0, 1], got {args.search_share}")
    settings = settings_with_stack()
    ensure(settings, DATASET, f"gaussian:{SIGMA}")
    cleans = held_out_photos(settings, DATASET)
    blurred = [to_8bit(degrade.apply(f"gaussian:{SIGMA}", c, seed=i)) for i, c in enumerate(cleans)]
    minutes = args.cpu_minutes
    search_minutes = minutes * args.search_share
    default_job = submit_train(settings, "bench-search-default", minutes)  # runs beside the search
    best_version, best_params, counts, cap = search(settings, search_minutes, args.trials)
    rest = minutes - search_minutes
    tuned_job = (submit_train(settings, "bench-search-tuned", rest, init_from=f"bench-search-best/{best_version}",
                              config=best_params) if rest > 0.5 else None)
    default_version, steps = finished(settings, default_job, "bench-search-default", "the default's training")
    rows = [["blurred input", "-", "-", *score(blurred, cleans)],
            ["nafnet-tiny default (EMA 0.999, D4, lr 2e-3)", f"{minutes:g}", f"{steps} steps",
             *score([model_fn(settings, "bench-search-default", default_version)(b) for b in blurred], cleans)],
            [f"best of an {args.trials}-trial ASHA search", f"{search_minutes:g}",
             f"{json.dumps(best_params)}; trials capped at {cap} steps; {counts['finished']} finished, "
             f"{counts['stopped_early']} stopped early, {counts['failed']} failed",
             *score([model_fn(settings, "bench-search-best", best_version)(b) for b in blurred], cleans)]]
    if tuned_job:
        tuned_version, tuned_steps = finished(settings, tuned_job, "bench-search-tuned", "training the best on")
        rows.append([f"the search's best trained on with its values ({minutes:g} CPU-minutes in all)", f"{rest:g}",
                     f"+{tuned_steps} steps from the search's best",
                     *score([model_fn(settings, "bench-search-tuned", tuned_version)(b) for b in blurred], cleans)])
    report(f"search_{minutes:g}cpumin", f"Search vs default, same CPU-minutes ({len(cleans)} held-out photos, "
           f"Gaussian sigma {SIGMA})", ["model", "CPU-minutes", "detail", "PSNR dB", "SSIM"], rows,
           notes=f"Space: {' '.join(SPACE)}. Both sides run at once, 1 worker (one core) each; the search's budget "
                 "covers its trials' start-up and validation too, the trainings' budgets count from their workers' "
                 "start.")


if __name__ == "__main__":
    main()
