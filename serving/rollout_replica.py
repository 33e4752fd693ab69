"""The ingress replica's side of a rollout (serving/rollout.py): it reads the plan from its
user_config, holds a DeploymentHandle to the challenger's Serve app, routes a canary's share to
it (a challenger that fails is answered by the champion), mirrors a shadow's sample after the
champion has answered, and reports every outcome to the ledger actor, whose answer (an
automatic abort) it follows at once."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import ray
from fastapi.responses import Response
from ray import serve

from serving.configs import DEPLOYMENT
from serving.rollout import LIVE, Plan, mirrored, output_psnr, parse_plan, route
from serving.rollout_ledger import ledger

log = logging.getLogger("img2img.serve")


class RolloutReplica:
    """Mixed into the Enhancer deployment: `follow_rollout` (from reconfigure),
    `routes_to_challenger`, `ask_challenger`, `after_champion`, `rollout_summary`."""

    def __init__(self):
        self.plan: Plan | None = None
        self.routing: Plan | None = None  # the plan while the challenger takes traffic, else None
        self.ledger = None
        self.challenger = None
        self.background: set[asyncio.Task] = set()  # mirrored requests and ledger answers in flight

    def follow_rollout(self, value: dict[str, Any] | None) -> None:
        """Apply the user_config's `rollout` value (None: no rollout). Raises Img2ImgError for a
        malformed plan."""
        plan = parse_plan(value)
        if plan is None:
            self.plan = self.routing = self.ledger = self.challenger = None
            return
        self.ledger = ledger()
        state = ray.get(self.ledger.begin.remote(plan.model_dump()), timeout=60)
        if state in LIVE and self.challenger is None:
            self.challenger = serve.get_deployment_handle(DEPLOYMENT, app_name=plan.app)
        self.plan = plan
        self.routing = plan if state in LIVE else None
        log.info("rollout %s: %s v%s, %s", plan.id, plan.name, plan.version, state)

    def routes_to_challenger(self) -> bool:
        return route(self.routing, random.random()) == "challenger"

    async def ask_challenger(self, body: bytes, fmt: str, tile: int, overlap: int, direction: str,
                             limit: float) -> Response | None:
        """The challenger's answer to a canary request, or None when it failed (an exception, a
        dead replica, a timeout past `limit` seconds, any non-200): the champion answers then.
        Errors counted against the challenger: everything but its 4xx (the input's fault)."""
        t0 = time.perf_counter()
        try:
            status, content, media, headers = await asyncio.wait_for(
                self.challenger.answer.remote(body, fmt, tile, overlap, direction), timeout=limit)
        except Exception as e:  # the champion answers instead: the client never sees it
            log.warning("challenger failed (%s); the champion answers", type(e).__name__)
            status = content = media = headers = None
        failed = status is None or status >= 500
        self._record("challenger", time.perf_counter() - t0, not failed)
        if status != 200:
            return None
        return Response(content=content, media_type=media, headers=headers)

    def after_champion(self, response: Response, seconds: float, args: tuple, limit: float,
                       fallback: bool) -> None:
        """Record the champion's answer during a rollout; mirror it to a shadow's challenger."""
        plan = self.routing
        if plan is None and not fallback:
            return
        self._record("champion", seconds, response.status_code < 500, fallback)
        if response.status_code == 200 and mirrored(plan, random.random()):
            self._spawn(self._mirror(args, bytes(response.body), seconds, limit))

    async def _mirror(self, args: tuple, champion_out: bytes, champion_s: float, limit: float) -> None:
        t0 = time.perf_counter()
        try:
            status, content, _, _ = await asyncio.wait_for(self.challenger.answer.remote(*args), timeout=limit)
        except Exception as e:  # never the client's concern: counted as the challenger's error
            log.warning("shadow request failed on the challenger (%s)", type(e).__name__)
            status, content = None, b""
        seconds = time.perf_counter() - t0
        ok = status is not None and status < 500
        psnr = await asyncio.to_thread(output_psnr, champion_out, content) if status == 200 else None
        if self.ledger is not None:
            self._follow(self.ledger.record_pair.remote(champion_s, seconds, ok, psnr))

    def _record(self, role: str, seconds: float, ok: bool, fallback: bool = False) -> None:
        if self.ledger is not None:
            self._follow(self.ledger.record.remote(role, seconds, ok, fallback))

    def _follow(self, ref) -> None:
        async def state():
            try:
                if await ref not in LIVE:  # an automatic abort: every request goes to the champion now
                    self.routing = None
            except Exception:
                log.exception("rollout ledger unreachable")
        self._spawn(state())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def rollout_summary(self) -> dict[str, Any]:
        if self.ledger is None:
            return {"state": "none"}
        return await self.ledger.summary.remote()
