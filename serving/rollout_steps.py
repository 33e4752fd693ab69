"""A stepped canary (`img2img serve canary --steps 5,25,50,100 --interval 10m`) as pure logic:
the challenger's share moves to the next step once the current one has lasted `interval_s`
seconds, has given the challenger at least `min_requests` requests to be judged on, and the
output comparison does not hold it (serving.rollout.Ledger evaluates it on every recorded
request, inside the rollout's ledger deployment: no timer, no client loop). An error-rate or
latency breach aborts the rollout instead (serving.rollout.breach). The last step is held until
a person promotes or aborts."""

from __future__ import annotations

import math
import re
from typing import Any

from cluster.errors import Img2ImgError

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_steps(text: str) -> list[float]:
    """"5,25,50,100" -> [5.0, 25.0, 50.0, 100.0]: shares (percent of requests, each in (0, 100])
    in strictly increasing order. Raises Img2ImgError (one line) for anything else."""
    try:
        steps = [float(part) for part in text.split(",")]
    except ValueError:
        raise Img2ImgError(f"--steps must be percentages separated by commas, like 5,25,50,100; got {text!r}") from None
    if not all(math.isfinite(s) and 0 < s <= 100 for s in steps):
        raise Img2ImgError(f"--steps must each be above 0 and at most 100, got {text!r}")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise Img2ImgError(f"--steps must increase, got {text!r}")
    return steps


def parse_interval(text: str) -> float:
    """"10m" / "30s" / "1h" / "90" (seconds) -> seconds (> 0). Raises Img2ImgError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise Img2ImgError(f"--interval must be a positive duration like 30s, 10m or 1h; got {text!r}")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


class Stepper:
    """Where a stepped canary stands: step `index` into `steps` (percent), since `started_at`
    (epoch seconds), the challenger's request count when that step began, and why it is held
    ("" when it is not)."""

    def __init__(self, steps: list[float], interval_s: float, now: float):
        self.steps, self.interval_s = list(steps), float(interval_s)
        self.index, self.started_at, self.base_requests, self.held = 0, now, 0, ""
        self.taken: list[dict[str, Any]] = [{"percent": self.steps[0], "at": now}]

    @property
    def percent(self) -> float:
        return self.steps[self.index]

    def tick(self, now: float, challenger_requests: int, min_requests: int, hold: str | None) -> bool:
        """Move to the next step when it is due (`now` epoch seconds; `challenger_requests`
        since the rollout began; `hold`: a reason from the output comparison, or None).
        -> True when the share changed."""
        if self.index + 1 >= len(self.steps):
            self.held = ""
            return False
        judged = challenger_requests - self.base_requests
        if now - self.started_at < self.interval_s:
            self.held = ""
        elif judged < min_requests:
            self.held = f"waiting for {min_requests - judged} more challenger request(s) at this step"
        elif hold:
            self.held = f"paused: {hold}"
        else:
            self.index += 1
            self.started_at, self.base_requests, self.held = now, challenger_requests, ""
            self.taken.append({"percent": self.percent, "at": now})
            return True
        return False

    def summary(self, state: str, now: float) -> dict[str, Any]:
        """-> {steps, step (1-based), of, percent, next_percent, next_at (epoch seconds or None),
        next_in_s, interval_s, held, taken: [{percent, at}], base_requests (the challenger's
        request count when this step began), next_move (one line for people)}."""
        last = self.index + 1 >= len(self.steps)
        nxt = None if last else self.steps[self.index + 1]
        next_at = None if last else self.started_at + self.interval_s
        if state != "canary":
            move = f"none: the rollout is {state}"
        elif last:
            move = "last step reached: promote or abort (img2img serve rollout promote|abort)"
        elif self.held:
            move = f"{nxt:g}% when due; {self.held}"
        else:
            move = f"{nxt:g}% in {max(0.0, next_at - now):.0f} s if the guards hold"
        return {"steps": self.steps, "step": self.index + 1, "of": len(self.steps), "percent": self.percent,
                "next_percent": nxt, "next_at": next_at,
                "next_in_s": None if next_at is None else max(0.0, next_at - now), "interval_s": self.interval_s, "held": self.held,
                "taken": self.taken, "base_requests": self.base_requests, "next_move": move}
