"""The ingress replica's side of a rollout (serving/rollout.py): it reads the plan from its
user_config, holds a DeploymentHandle to the challenger's Serve app, routes a canary's share to
it (a challenger that fails is answered by the champion), mirrors a shadow's sample after the
champion has answered, samples both versions' output sharpness (serving/rollout_compare.py),
and reports every outcome to the app's ledger deployment (serving/rollout_ledger.py), whose
answer (an automatic abort, a stepped canary's new share) it follows at once."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from typing import Any

from fastapi.responses import Response
from ray import serve

from serving.configs import DEPLOYMENT
from serving.rollout import LIVE, Plan, mirrored, parse_plan, route
from serving.rollout_compare import compare_outputs, output_sharpness, triplet
from serving.rollout_ledger import log_triplet
from translator.compute import on_compute_thread

log = logging.getLogger("img2img.serve")
MAX_MIRRORS_IN_FLIGHT = 2  # per ingress replica: past this a shadow skips mirroring (no unbounded backlog)
FLUSH_S, FLUSH_MAX = 0.1, 64  # a replica's answers reach the ledger in batches (`_push`)
TRIPLETS_PER_REPLICA = 4  # before | champion | challenger images each ingress replica stores per shadow
VERSIONS = ("champion", "challenger")  # what a request may ask for by name (?version=)


class RolloutReplica:
    """Mixed into the Enhancer deployment: `follow_rollout` (from reconfigure),
    `routes_to_challenger`, `ask_challenger`, `after_champion`, `rollout_summary`; on the
    challenger, `answer` and `shadow_answer` (the ingress asks them). `ledger`: the
    app's RolloutLedger handle (None in the challenger's app, which takes no rollout)."""

    def __init__(self, ledger=None):
        self.plan: Plan | None = None
        self.routing: Plan | None = None  # the plan while the challenger takes traffic, else None
        self.ledger_handle = ledger
        self.ledger = None  # the handle while a plan is followed
        self.challenger = None
        self.background: set[asyncio.Task] = set()  # mirrored requests and ledger answers in flight
        self.triplets: dict[str, int] = {}  # rollout id -> triplets this replica has stored
        self.pending: list[tuple] = []  # answers not yet sent to the ledger (`_push`)
        self.mirrors_in_flight = 0  # a shadow's requests this replica sent the challenger, not yet answered
        self.flush_due = False
        self.replica_tag = uuid.uuid4().hex[:6]  # names this replica's triplets apart from the others'

    def follow_rollout(self, value: dict[str, Any] | None) -> None:
        """Apply the user_config's `rollout` value (None: no rollout). Raises Img2ImgError for a
        malformed plan. Runs in Serve's thread pool (a sync reconfigure), so it may wait."""
        plan = parse_plan(value)
        if plan is None or self.plan is None or plan.id != self.plan.id:  # answers of another rollout
            self.pending = []
        if plan is None or self.ledger_handle is None:
            self.plan = self.routing = self.ledger = self.challenger = None
            return
        self.ledger = self.ledger_handle
        view = self.ledger.begin.remote(plan.model_dump()).result(timeout_s=60)
        if view["state"] in LIVE and self.challenger is None:
            self.challenger = serve.get_deployment_handle(DEPLOYMENT, app_name=plan.app)
        self.plan = plan
        self.routing = plan.model_copy(update={"percent": view["percent"]}) if view["state"] in LIVE else None
        log.info("rollout %s: %s v%s, %s", plan.id, plan.name, plan.version, view["state"])

    def routes_to_challenger(self, version: str | None = None) -> bool:
        """Whether the challenger answers this request: `version` "challenger" or "champion"
        asks for one by name (the web page's side-by-side view; the challenger only while a
        rollout is live), else a canary's draw."""
        if version in VERSIONS:
            return version == "challenger" and self.routing is not None and self.challenger is not None
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
        self._record("challenger", time.perf_counter() - t0, not failed, output=content if status == 200 else None)
        if status != 200:
            return None
        return Response(content=content, media_type=media, headers=headers)

    def after_champion(self, response: Response, seconds: float, args: tuple, limit: float,
                       fallback: bool) -> None:
        """Record the champion's answer during a rollout; mirror it to a shadow's challenger. In
        a canary, the champion's output sharpness is sampled at the rate that matches the
        challenger's number of answers (percent / (100 - percent))."""
        plan = self.routing
        if plan is None and not fallback:
            return
        ok = response.status_code == 200
        # best effort: a challenger that cannot keep up gets fewer mirrors (counted as skipped),
        # never a growing queue in the ingress's router
        sampled = ok and mirrored(plan, random.random())
        if sampled and self.mirrors_in_flight < MAX_MIRRORS_IN_FLIGHT:
            self._record("champion", seconds, True, fallback)
            self._spawn(self._mirror(args, bytes(response.body), seconds, limit))
            return
        if sampled:
            self._push(("skip",))
        share = plan.percent / max(1e-9, 100 - plan.percent) if plan is not None and plan.state == "canary" else 0
        sampled = ok and random.random() < share
        self._record("champion", seconds, response.status_code < 500, fallback,
                     output=bytes(response.body) if sampled else None)

    async def shadow_answer(self, body: bytes, fmt: str, tile: int, overlap: int, direction: str,
                            champion_out: bytes, keep_output: bool) -> tuple:
        """A shadow's mirrored request, answered AND compared with the champion's answer
        `champion_out` here, on the challenger: decoding both outputs and measuring them then
        costs the challenger's (lower-priority) process, not the champion's ingress.
        -> (HTTP status, PSNR dB of this answer against the champion's, the champion's
        sharpness, this answer's sharpness, this answer's bytes when `keep_output` else b"",
        seconds the comparison took: not part of the answer's latency); the measures are None
        unless the status is 200 (`rollout_compare.compare_outputs`)."""
        status, content, _, _ = await self.answer(body, fmt, tile, overlap, direction)
        t0 = time.perf_counter()
        # on the compute thread: in a shadow's challenger, it runs at the lowest priority
        measures = (await on_compute_thread(compare_outputs, champion_out, content) if status == 200
                    else (None, None, None))
        return (status, *measures, content if keep_output and status == 200 else b"", time.perf_counter() - t0)

    async def _mirror(self, args: tuple, champion_out: bytes, champion_s: float, limit: float) -> None:
        t0 = time.perf_counter()
        plan = self.plan
        keep = plan is not None and self.triplets.get(plan.id, 0) < TRIPLETS_PER_REPLICA
        self.mirrors_in_flight += 1
        try:
            status, psnr, sharp_a, sharp_b, content, compare_s = await asyncio.wait_for(
                self.challenger.shadow_answer.remote(*args, champion_out, keep), timeout=limit)
        except Exception as e:  # never the client's concern: counted as the challenger's error
            log.warning("shadow request failed on the challenger (%s)", type(e).__name__)
            status = psnr = sharp_a = sharp_b = None
            compare_s = 0.0
        finally:
            self.mirrors_in_flight -= 1
        seconds = time.perf_counter() - t0 - compare_s  # the challenger's answer, as a user would wait for it
        ok = status is not None and status < 500
        self._push(("pair", champion_s, seconds, ok, psnr, sharp_a, sharp_b))
        if status == 200 and keep and self.triplets.get(plan.id, 0) < TRIPLETS_PER_REPLICA:
            n = self.triplets[plan.id] = self.triplets.get(plan.id, 0) + 1
            labels = ["before", f"champion v{plan.champion_version}", f"challenger v{plan.version}"]
            image = await asyncio.to_thread(triplet, args[0], champion_out, content, labels)
            await asyncio.to_thread(log_triplet, plan.tracking_uri, plan.run_id, image, f"{self.replica_tag}-{n:02d}")

    def _record(self, role: str, seconds: float, ok: bool, fallback: bool = False, output: bytes | None = None) -> None:
        """Report one answer to the ledger; `output`: its image, whose sharpness is measured off
        the request's path first."""
        if self.ledger is None:
            return

        if output is None:
            self._push(("one", role, seconds, ok, fallback, None))
            return

        async def report():
            sharp = await asyncio.to_thread(output_sharpness, output)
            self._push(("one", role, seconds, ok, fallback, sharp))
        self._spawn(report())

    def _push(self, event: tuple) -> None:
        """Queue one answer for the ledger. Answers go in batches (`RolloutLedger.record_many`),
        at most FLUSH_S seconds after the first of a batch or at FLUSH_MAX of them: one call to
        the ledger per request cost the champion up to a third of its throughput on 2 cores."""
        if self.ledger is None:
            return
        self.pending.append(event)
        if len(self.pending) >= FLUSH_MAX:
            self._flush()
        elif not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        events, self.pending = self.pending, []
        if events and self.ledger is not None:
            self._follow(self.ledger.record_many.remote(events))

    def _follow(self, response) -> None:
        async def view():
            try:
                answer = await response
            except Exception:
                log.exception("rollout ledger unreachable")
                return
            if answer["state"] not in LIVE:  # an automatic abort: every request goes to the champion now
                self.routing = None
            elif self.routing is not None and self.routing.percent != answer["percent"]:  # a canary's next step
                self.routing = self.routing.model_copy(update={"percent": answer["percent"]})
        self._spawn(view())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def rollout_summary(self) -> dict[str, Any]:
        if self.ledger is None:
            return {"state": "none"}
        return await self.ledger.summary.remote()

    async def rollout_claim(self, token: str, what: str, ttl_s: float) -> str | None:
        """One client at a time starts or ends a rollout (serving.rollout.Ledger.claim)."""
        if self.ledger_handle is None:
            return "this app takes no rollout"
        return await self.ledger_handle.claim.remote(token, what, ttl_s)

    async def rollout_release(self, token: str) -> None:
        if self.ledger_handle is not None:
            await self.ledger_handle.release.remote(token)
