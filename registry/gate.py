"""The promotion rule, pure: what a promotion decided (`Decision`), why a candidate should not
become champion (`promotion_objections`), and the metrics it may rank by. Light to import: the CLI
checks `--metric` here before anything heavy is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cluster.errors import Img2ImgError

METRICS = ("psnr", "ssim", "gain_db")  # higher is better, each


def check_metric(metric: str) -> None:
    """Raise Img2ImgError unless `metric` is one the gate ranks by (`METRICS`)."""
    if metric not in METRICS:
        raise Img2ImgError(f"--metric must be psnr, ssim or gain_db, got {metric!r}")


@dataclass
class Decision:
    """What `promote` did: the new champion, the one it replaced, the scores it compared."""

    name: str
    new: str
    previous: str | None
    dataset: str | None = None
    split: str | None = None
    metric: str | None = None
    scores: dict[str, dict] = field(default_factory=dict)  # version -> eval metrics
    sources: dict[str, str] = field(default_factory=dict)  # version -> who computed its metrics
    warnings: list[str] = field(default_factory=list)
    changed: bool = True


class Refused(Img2ImgError):
    """The gate refused a candidate; `decision` holds the scores it compared."""

    def __init__(self, message: str, decision: Decision):
        super().__init__(message)
        self.decision = decision


def metric_value(metrics: dict, metric: str) -> float | None:
    """`metric` from a version's scores; unpaired models have only its cycle_ form."""
    return metrics.get(metric, metrics.get(f"cycle_{metric}"))


def promotion_objections(candidate: str, champion: str | None, score: dict[str, dict], metric: str,
                         where: str, scales: dict[str, int] | None = None) -> list[str]:
    """The promotion rule (pure): why `candidate` should not become champion, [] when nothing
    stands against it. `score`: {version: metrics on the evaluation set `where`}; `metric`
    (psnr | ssim | gain_db, higher is better; unpaired models by their cycle_ metric).
    Objections: the candidate's score is not a finite number (nan/inf: its training diverged);
    its output is worse than its input (gain_db < 0); it scores below the current `champion` on
    `metric` (a tie is no objection); `scales` ({version: output/input scale}, when given) differ
    between candidate and champion (a 4x model does not replace a 2x one: clients would get images
    of another size, and their scores are not on the same task)."""
    reasons = []
    scales = scales or {}
    if champion not in (None, candidate) and scales.get(candidate, 1) != scales.get(champion, 1):
        reasons.append(f"v{candidate} makes {scales.get(candidate, 1)}x images and champion v{champion} "
                       f"{scales.get(champion, 1)}x: the gate compares models of one scale only")
    value = metric_value(score[candidate], metric)
    if value is not None and not math.isfinite(value):
        reasons.append(f"v{candidate} has {metric} {value} on {where}: not a number to rank (its training diverged)")
    gain = score[candidate].get("gain_db")
    if gain is not None and math.isfinite(gain) and gain < 0:
        reasons.append(f"v{candidate} makes images worse than its input on {where} (gain {gain:+.2f} dB)")
    if champion is not None and champion != candidate and champion in score:
        new, old = metric_value(score[candidate], metric), metric_value(score[champion], metric)
        if new is not None and old is not None and new < old:
            reasons.append(f"v{candidate} has {metric} {new:.3f} on {where}, worse than champion v{champion} "
                           f"({old:.3f})")
    return reasons
