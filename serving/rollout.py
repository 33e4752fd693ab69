"""A rollout's plan and its numbers, as pure functions and plain data (no Ray, no HTTP): which
model answers a request, whether it is mirrored, the per-version statistics over a sliding
window, and when those statistics breach the abort limits.

A rollout puts a challenger version beside the served champion (docs/rolling-out.md):
- canary: `percent` % of /enhance requests are answered by the challenger (chosen per request
  with a uniform draw); a challenger failure is answered again by the champion;
- shadow: a `sample` share of requests is also sent to the challenger after the champion has
  answered; the client never waits for it. Each mirrored pair records both latencies and the
  PSNR of the challenger's output against the champion's.
The champion's and challenger's last `window` requests are compared after each challenger
request; a breach of `Limits` ends the rollout (state "aborted") with the reason.
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import Img2ImgError

LIVE = ("canary", "shadow")  # states in which the challenger takes traffic
ENDED = ("promoted", "aborted")


class Limits(BaseModel):
    """When a rollout aborts itself. Over the challenger's last `window` requests (at least
    `min_requests` of them): its error rate (0-1) above `max_error_rate`, or its p95 latency
    (seconds) above `max_p95_ratio` x the champion's p95 over the same window plus
    `p95_slack_s` (small images on a CPU vary by tens of milliseconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_p95_ratio: float = Field(3.0, gt=0)
    p95_slack_s: float = Field(0.25, ge=0)
    min_requests: int = Field(10, ge=1)
    window: int = Field(50, ge=1)


class Plan(BaseModel):
    """What the ingress reads from its user_config key `rollout`: the rollout `id`, `mode`
    (canary or shadow), its `state`
    (canary, shadow, promoted, aborted), the challenger (registered `name`, `version`, the Serve
    app it runs in), `percent` (0-100, canary), `sample` (0-1, shadow), the limits, why it ended,
    and the MLflow run that records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    mode: str = Field(pattern="^(canary|shadow)$")
    state: str = Field(pattern="^(canary|shadow|promoted|aborted)$")
    name: str
    version: str
    champion_version: str
    app: str
    percent: float = Field(0.0, ge=0, le=100)
    sample: float = Field(0.0, ge=0, le=1)
    limits: Limits = Limits()
    reason: str = ""
    decided_by: str = ""
    run_id: str | None = None
    tracking_uri: str | None = None


def check_share(percent: float | None, sample: float | None) -> None:
    """Raise Img2ImgError (one line) for a canary `percent` outside 0-100 or a shadow `sample`
    outside 0-1 (None: not given)."""
    if percent is not None and not (math.isfinite(percent) and 0 <= percent <= 100):
        raise Img2ImgError(f"--percent must be between 0 and 100, got {percent:g}")
    if sample is not None and not (math.isfinite(sample) and 0 <= sample <= 1):
        raise Img2ImgError(f"--sample must be between 0 and 1, got {sample:g}")


def parse_plan(value: dict[str, Any] | None) -> Plan | None:
    """The user_config's `rollout` value -> Plan (None: no rollout). Raises Img2ImgError."""
    if not value:
        return None
    try:
        return Plan(**value)
    except ValidationError as e:
        raise Img2ImgError(f"user_config rollout: {e.errors()[0]['msg']}") from None


def route(plan: Plan | None, draw: float) -> str:
    """Who answers a request: "challenger" when a live canary's `percent` covers `draw`
    (uniform in [0, 1)), else "champion"."""
    if plan is not None and plan.state == "canary" and draw * 100 < plan.percent:
        return "challenger"
    return "champion"


def mirrored(plan: Plan | None, draw: float) -> bool:
    """Whether a request the champion answered is also sent to a live shadow's challenger."""
    return plan is not None and plan.state == "shadow" and draw < plan.sample


def percentile(values, q: float) -> float | None:
    """The `q` (0-100) percentile of `values` (seconds), linear interpolation; None when empty."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def output_psnr(a: bytes, b: bytes) -> float | None:
    """PSNR (dB) of encoded image `b` against encoded image `a` (any format Pillow reads), on
    the full range of their dtype (255 for 8-bit, 65535 for 16-bit); inf when identical; None
    when they cannot be compared (different sizes, channels or an undecodable body)."""
    from PIL import Image

    try:
        x, y = (np.asarray(Image.open(io.BytesIO(d))) for d in (a, b))
    except Exception:
        return None
    if x.shape != y.shape or x.dtype != y.dtype:
        return None
    peak = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


class Tally:
    """One version's requests: totals since the rollout began and the last `window` outcomes
    (latency seconds, ok) for the limits and the percentiles."""

    def __init__(self, window: int):
        self.requests = self.errors = 0
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self.latencies: deque[float] = deque(maxlen=2000)  # successes, for p50/p95 in status

    def add(self, latency_s: float, ok: bool) -> None:
        self.requests += 1
        self.errors += not ok
        self.recent.append((latency_s, ok))
        if ok:
            self.latencies.append(latency_s)

    def recent_p95(self) -> float | None:
        return percentile([s for s, ok in self.recent if ok], 95)

    def summary(self) -> dict[str, Any]:
        """-> {requests, errors, error_rate, p50_s, p95_s} (rates 0-1, latencies seconds)."""
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "p50_s": percentile(self.latencies, 50), "p95_s": percentile(self.latencies, 95)}


def breach(champion: Tally, challenger: Tally, limits: Limits) -> str | None:
    """The reason to abort, or None: the challenger's error rate, then its p95 latency, over its
    last `limits.window` requests (once it has `limits.min_requests`)."""
    recent = challenger.recent
    if len(recent) < limits.min_requests:
        return None
    failed = sum(not ok for _, ok in recent)
    if failed / len(recent) > limits.max_error_rate:
        return (f"challenger error rate {failed / len(recent):.0%} over its last {len(recent)} requests "
                f"exceeds the limit {limits.max_error_rate:.0%}")
    mine, theirs = challenger.recent_p95(), champion.recent_p95()
    if mine is not None and theirs is not None and len(champion.recent) >= limits.min_requests:
        bound = limits.max_p95_ratio * theirs + limits.p95_slack_s
        if mine > bound:
            return (f"challenger p95 latency {mine:.3f} s over its last {len(recent)} requests exceeds "
                    f"{limits.max_p95_ratio:g} x the champion's {theirs:.3f} s + {limits.p95_slack_s:g} s")
    return None


class Comparison:
    """Shadow pairs: both latencies (seconds) and the PSNR (dB) of the challenger's output
    against the champion's, per mirrored request."""

    def __init__(self):
        self.pairs = 0
        self.psnr: deque[float] = deque(maxlen=2000)
        self.identical = 0

    def add(self, psnr_db: float | None) -> None:
        self.pairs += 1
        if psnr_db is not None and math.isinf(psnr_db):
            self.identical += 1
        elif psnr_db is not None:
            self.psnr.append(psnr_db)

    def summary(self) -> dict[str, Any]:
        """-> {pairs, identical (outputs equal byte for byte in pixels), psnr_mean_db, psnr_min_db}
        (the PSNR statistics over the pairs that differ)."""
        return {"pairs": self.pairs, "identical": self.identical,
                "psnr_mean_db": float(np.mean(self.psnr)) if self.psnr else None,
                "psnr_min_db": float(np.min(self.psnr)) if self.psnr else None}


class Ledger:
    """The numbers of one rollout at a time, shared by every ingress replica (held in one Ray
    actor: serving/rollout_ledger.py). `begin(plan)` starts a new rollout (a new id resets the
    numbers) or follows an existing one's state; `record*` add one request and -> the state
    ("canary", "shadow", "promoted", "aborted"): an automatic abort is decided here."""

    def __init__(self):
        self.plan: Plan | None = None
        self.state, self.reason, self.decided_by, self.ended_at = "", "", "", None
        self.champion = self.challenger = Tally(1)
        self.comparison = Comparison()
        self.fallbacks = 0
        self.started_at = time.time()

    def begin(self, plan: Plan) -> str:
        if self.plan is None or plan.id != self.plan.id:
            self.__init__()
            self.champion, self.challenger = Tally(plan.limits.window), Tally(plan.limits.window)
        if self.state not in ENDED:  # an automatic abort stands; a user's decision arrives here
            self.state, self.reason, self.decided_by = plan.state, plan.reason, plan.decided_by
            if plan.state in ENDED:
                self.ended_at = time.time()
        self.plan = plan
        return self.state

    def record(self, role: str, latency_s: float, ok: bool, fallback: bool = False) -> str:
        (self.challenger if role == "challenger" else self.champion).add(latency_s, ok)
        self.fallbacks += fallback
        if role == "challenger" and self.state in LIVE and self.plan is not None:
            reason = breach(self.champion, self.challenger, self.plan.limits)
            if reason:
                self.state, self.reason, self.decided_by, self.ended_at = "aborted", reason, "automatic", time.time()
        return self.state

    def record_pair(self, champion_s: float, challenger_s: float, ok: bool, psnr_db: float | None) -> str:
        if ok:
            self.comparison.add(psnr_db)
        return self.record("challenger", challenger_s, ok)

    def summary(self) -> dict[str, Any]:
        """-> the rollout as JSON-ready data: plan fields, state, reason, per-version numbers."""
        if self.plan is None:
            return {"state": "none"}
        p = self.plan
        return {"id": p.id, "state": self.state, "mode": p.mode,
                "model": p.name, "champion_version": p.champion_version, "challenger_version": p.version,
                "percent": p.percent, "sample": p.sample, "reason": self.reason, "decided_by": self.decided_by,
                "run_id": p.run_id, "started_at": self.started_at, "ended_at": self.ended_at,
                "limits": p.limits.model_dump(), "fallbacks": self.fallbacks,
                "champion": self.champion.summary(), "challenger": self.challenger.summary(),
                "comparison": self.comparison.summary()}
