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

import math
import time
from collections import deque
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import Img2ImgError
from serving.rollout_compare import Comparison, output_psnr  # noqa: F401  (the rollout's measures)
from serving.rollout_steps import Stepper

LIVE = ("canary", "shadow")  # states in which the challenger takes traffic
ENDED = ("promoted", "aborted")


class Limits(BaseModel):
    """When a rollout aborts itself. Over the challenger's last `window` requests (at least
    `min_requests` of them): its error rate (0-1) above `max_error_rate`, or its p95 latency
    (seconds) above `max_p95_ratio` x the champion's p95 over the same window plus
    `p95_slack_s` (small images on a CPU vary by tens of milliseconds). A stepped canary also
    holds its step (does not step up) while the challenger's mean output sharpness is more than
    `max_sharpness_change` times above or below the champion's (each over its last `window`
    sampled outputs, at least `min_requests` of them)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_p95_ratio: float = Field(3.0, gt=0)
    p95_slack_s: float = Field(0.25, ge=0)
    min_requests: int = Field(10, ge=1)
    window: int = Field(50, ge=1)
    max_sharpness_change: float = Field(2.0, ge=1)


class Plan(BaseModel):
    """What the ingress reads from its user_config key `rollout`: the rollout `id`, `mode`
    (canary or shadow), its `state`
    (canary, shadow, promoted, aborted), the challenger (registered `name`, `version`, the Serve
    app it runs in), `percent` (0-100, canary), `sample` (0-1, shadow), the limits, why it ended,
    and the MLflow run that records it. A stepped canary has `steps` (percent, increasing; the
    first is `percent`) taken every `interval_s` seconds (serving/rollout_steps.py)."""

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
    steps: list[float] = []
    interval_s: float = Field(0.0, ge=0)
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


def breach(champion: Tally, challenger: Tally, limits: Limits, latency: bool = True) -> str | None:
    """The reason to abort, or None: the challenger's error rate, then (`latency`: a canary,
    where users wait for it; a shadow's user never does) its p95 latency, over its last
    `limits.window` requests (once it has `limits.min_requests`)."""
    recent = challenger.recent
    if len(recent) < limits.min_requests:
        return None
    failed = sum(not ok for _, ok in recent)
    if failed / len(recent) > limits.max_error_rate:
        return (f"challenger error rate {failed / len(recent):.0%} over its last {len(recent)} requests "
                f"exceeds the limit {limits.max_error_rate:.0%}")
    mine, theirs = challenger.recent_p95(), champion.recent_p95()
    if latency and mine is not None and theirs is not None and len(champion.recent) >= limits.min_requests:
        bound = limits.max_p95_ratio * theirs + limits.p95_slack_s
        if mine > bound:
            return (f"challenger p95 latency {mine:.3f} s over its last {len(recent)} requests exceeds "
                    f"{limits.max_p95_ratio:g} x the champion's {theirs:.3f} s + {limits.p95_slack_s:g} s")
    return None


class Ledger:
    """The numbers of one rollout at a time, shared by every ingress replica (held in the
    enhancer app's RolloutLedger deployment: serving/rollout_ledger.py). `begin(plan)` starts a
    new rollout (a new id resets the numbers) or follows an existing one's state; `record*` add
    one request and -> the state ("canary", "shadow", "promoted", "aborted"): an automatic abort
    and a stepped canary's next step are decided here (`view` gives the share now in force).
    `claim`/`release` let one client at a time start or end a rollout. `clock`: epoch seconds."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.plan: Plan | None = None
        self.state, self.reason, self.decided_by, self.ended_at = "", "", "", None
        self.champion = self.challenger = Tally(1)
        self.comparison = Comparison()
        self.stepper: Stepper | None = None
        self.fallbacks = 0
        self.skipped = 0  # a shadow's sampled requests not mirrored: the challenger had too many in flight
        self.started_at = clock()
        self.claimed: dict[str, Any] | None = None

    def begin(self, plan: Plan) -> str:
        if self.plan is None or plan.id != self.plan.id:
            claimed = self.claimed
            self.__init__(self.clock)
            self.claimed = claimed
            self.champion, self.challenger = Tally(plan.limits.window), Tally(plan.limits.window)
            self.comparison = Comparison(plan.limits.window)
            if plan.mode == "canary" and plan.steps:
                self.stepper = Stepper(plan.steps, plan.interval_s, self.clock())
        if self.state not in ENDED:  # an automatic abort stands; a user's decision arrives here
            self.state, self.reason, self.decided_by = plan.state, plan.reason, plan.decided_by
            if plan.state in ENDED:
                self.ended_at = self.clock()
        self.plan = plan
        return self.state

    def view(self) -> dict[str, Any]:
        """-> {state, percent}: what every ingress replica routes by now."""
        return {"state": self.state, "percent": self.percent}

    @property
    def percent(self) -> float:
        if self.plan is None:
            return 0.0
        return self.stepper.percent if self.stepper is not None else self.plan.percent

    def record(self, role: str, latency_s: float, ok: bool, fallback: bool = False,
               sharpness: float | None = None) -> str:
        """One request answered by `role` in `latency_s` seconds (`fallback`: the champion
        answered a request the challenger failed; `sharpness`: its output's, when sampled)."""
        (self.challenger if role == "challenger" else self.champion).add(latency_s, ok)
        self.fallbacks += fallback
        if ok:
            self.comparison.add_sharpness(role, sharpness)
        if self.state in LIVE and self.plan is not None:
            limits = self.plan.limits
            reason = (breach(self.champion, self.challenger, limits, latency=self.plan.mode == "canary")
                      if role == "challenger" else None)
            if reason:
                self.state, self.reason, self.decided_by, self.ended_at = "aborted", reason, "automatic", self.clock()
            elif self.stepper is not None:
                self.stepper.tick(self.clock(), self.challenger.requests, limits.min_requests,
                                  self.comparison.hold(limits.max_sharpness_change, limits.min_requests))
        return self.state

    def record_pair(self, champion_s: float, challenger_s: float, ok: bool, psnr_db: float | None,
                    champion_sharpness: float | None = None, challenger_sharpness: float | None = None) -> str:
        """One mirrored request: both latencies (seconds), whether the challenger answered, the
        PSNR (dB) of its output against the champion's and both outputs' sharpness."""
        if ok:
            self.comparison.add(psnr_db)
            self.comparison.add_sharpness("champion", champion_sharpness)
        return self.record("challenger", challenger_s, ok, sharpness=challenger_sharpness)

    def record_many(self, events: list[tuple]) -> str:
        """Several requests in the order they were answered, as an ingress replica batches them
        (serving/rollout_replica.py): each ("one", *`record`'s arguments), ("pair",
        *`record_pair`'s arguments) or ("skip",): a shadow's sampled request that was not
        mirrored (the challenger was behind). -> the state after the last."""
        for kind, *args in events:
            if kind == "skip":
                self.skipped += 1
                continue
            (self.record_pair if kind == "pair" else self.record)(*args)
        return self.state

    def claim(self, token: str, what: str, ttl_s: float) -> str | None:
        """Let the client holding `token` start or end a rollout (`what` it does, for the others)
        for at most `ttl_s` seconds -> None when granted (free, expired or already its own),
        else one line saying who holds it."""
        now = self.clock()
        held = self.claimed
        if held is None or held["until"] < now or held["token"] == token:
            self.claimed = {"token": token, "what": what, "since": now, "until": now + ttl_s}
            return None
        return (f"another client is {held['what']} (for {now - held['since']:.0f} s); wait for it, then see "
                "img2img serve rollout status")

    def release(self, token: str) -> None:
        if self.claimed is not None and self.claimed["token"] == token:
            self.claimed = None

    def summary(self) -> dict[str, Any]:
        """-> the rollout as JSON-ready data: plan fields, state, reason, per-version numbers,
        the output comparison and, for a stepped canary, `steps` (serving.rollout_steps)."""
        if self.plan is None:
            return {"state": "none"}
        p = self.plan
        return {"id": p.id, "state": self.state, "mode": p.mode,
                "model": p.name, "champion_version": p.champion_version, "challenger_version": p.version,
                "percent": self.percent, "sample": p.sample, "reason": self.reason, "decided_by": self.decided_by,
                "run_id": p.run_id, "started_at": self.started_at, "ended_at": self.ended_at,
                "limits": p.limits.model_dump(), "fallbacks": self.fallbacks, "skipped": self.skipped,
                "champion": self.champion.summary(), "challenger": self.challenger.summary(),
                "comparison": self.comparison.summary(),
                "steps": None if self.stepper is None else self.stepper.summary(self.state, self.clock())}
