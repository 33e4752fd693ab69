"""The Ray Serve application `enhancer`: a FastAPI ingress over an autoscaling deployment.

Each replica loads the registered model named in its user_config once, warms it up, and
serves POST /enhance, GET /healthz, GET /model and the web page (GET /, from serving/web). Tiles of concurrent requests are batched
together through `@serve.batch`. A new user_config (a promotion, `serve deploy` again) loads
the new model beside the old one and swaps it in; requests already running finish on the old.

Every request has two time limits (docs/serving-limits.md). Its body must arrive within
`upload_timeout_s` (past it: JSON 408, blaming the upload). Its computation, counted from when
the body has arrived, has `request_timeout_s` (sized by `img2img serve deploy` from the pixel
limit and the speed each replica measures when it loads the model): past it the answer is a
JSON 504 marked `X-Time-Limit-S` (clients do not retry it), never a dropped connection, and the
request's computation stops at its next tile pass. It stops there too when its client goes away
(a closed tab, a Ctrl-C), so the replica is free for the next request. A body announced over
the size limit is refused 413 on its Content-Length, never decoded or kept (serving/body.py).
Planned replica stops (downscale, redeploy, `serve rm`) wait `graceful_shutdown_timeout_s`, longer than that limit, so accepted
requests finish. Unpaired models serve `?direction=AtoB|BtoA`.

Here: the routes and the replica's state (its parsed user_config, serving.options). Their parts:
serving/body.py (API key, body limits), serving/page.py (web files), serving/responses.py
(JSON errors), serving/py (the compute thread, tile batching).
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from ray import serve
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cluster.errors import Img2ImgError
from registry.loading import LoadedModel, load_and_measure
from serving.body import authorised, discard, read_body
from serving.configs import DEPLOYMENT
from serving.limits import cancel_on_disconnect, compute_too_slow, upload_too_slow
from serving.options import DEFAULTS as OPTIONS
from serving.options import (
    SCALING,
    ReplicaOptions,
    ServedModel,
    config_id,
    parse_user_config,
    tiling_problem,
)
from serving.page import web_response
from serving.responses import bad_parameters, error, server_timing
from serving.rollout_ledger import RolloutLedger
from serving.rollout_replica import RolloutReplica
from translator import codec, tiling
from translator.allocator import retain_freed_memory
from translator.compute import (
    compute_thread,
    enhance_alone,
    on_compute_thread,
    run_grouped,
    split_for,
)
from translator.runtime import threads_for

log = logging.getLogger("img2img.serve")
api = FastAPI(title="img2img enhancer", description="Image enhancement with a registered img2img model.")
api.add_exception_handler(RequestValidationError, bad_parameters)


def _reserved_cpus() -> float | None:
    try:
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside a Ray worker
        return None


def lower_priority() -> None:
    """Every thread of this process, and every thread started afterwards (torch's intra-op pool,
    the event loop's executors), under SCHED_IDLE: they get a CPU only when nothing else wants
    it. For a replica that serves only a shadow's challenger: its model, codec, comparison AND
    its Serve/Ray threads (which receive each mirrored request) yield to the champion's. Not a
    nice value: Ray starts every worker at nice 15 (its `worker_niceness`), so a "nice 10" changes
    nothing and nice can add at most 4 levels (a 2.4:1 share). Linux keeps the policy per thread
    and a new thread takes its creator's; a process may switch its own threads to SCHED_IDLE
    without privilege."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # the thread ended meanwhile
            pass


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": SCALING.num_cpus},
                  max_ongoing_requests=SCALING.ongoing_limit(OPTIONS))
@serve.ingress(api)
class Enhancer(RolloutReplica):
    """One replica: the model its user_config names (`reconfigure`), its options
    (serving.options.ReplicaOptions), the routes, and a rollout's challenger beside the
    champion (serving/rollout_replica.py)."""

    def __init__(self, ledger=None):
        RolloutReplica.__init__(self, ledger)
        self.model: LoadedModel | None = None
        self.load_error = "no model configured yet"
        self.options: ReplicaOptions = OPTIONS
        self.served: ServedModel | None = None
        self.config_id = ""
        self.model_key: tuple = ()
        self.initial_threads = torch.get_num_threads()  # what Ray's worker env gave torch
        # Freed activations stay in the process: page-faulting them back in cost 25-30% of a
        # 256x256 pass (translator/allocator.py).
        self.retains_freed_memory = retain_freed_memory()
        self.in_background = False  # whether this replica runs under SCHED_IDLE (lower_priority)

    def reconfigure(self, config: dict) -> None:
        self.follow_rollout(config.get("rollout"))  # the rollout's plan is not a replica option
        served, options = parse_user_config({k: v for k, v in config.items() if k != "rollout"})
        if options.background and not self.in_background:  # before the model load starts torch's threads
            lower_priority()
            self.in_background = True
        self.run_tiles.set_max_batch_size(options.max_batch_size)
        self.run_tiles.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        # Intra-op threads match the CPUs this replica reserved (floor, at least 1).
        build = options.model_build(threads=options.threads or threads_for(_reserved_cpus()))
        key = (served.model_name, served.model_version, served.model_run_id, *sorted(build.items()))
        if self.model is None or key != self.model_key:  # what the loaded model was built from
            try:
                new = compute_thread().submit(load_and_measure, served.tracking_uri, served.model_name,
                                              served.model_version, **build).result()
                self.model, self.model_key, self.load_error = new, key, None
                log.info("serving %s v%s (%s) on %s", new.name, new.version, new.variant, new.runtime.info())
            except Exception as e:  # keep serving the old model (or 503) instead of dying
                self.load_error = f"could not load {served.model_name} v{served.model_version}: {e}"
                log.exception("model load failed")
        self.served, self.options = served, options
        # Lets `img2img serve deploy` see when this exact config has been applied.
        self.config_id = config_id(config)

    @serve.batch(max_batch_size=OPTIONS.max_batch_size, batch_wait_timeout_s=OPTIONS.batch_wait_timeout_s)
    async def run_tiles(self, items: list[tuple[LoadedModel, object, torch.Tensor, bool]]) -> list[torch.Tensor]:
        """Tiles from concurrent requests, run together (see `translator.compute.run_grouped`)."""
        return await on_compute_thread(run_grouped, items)

    def _key_sha256(self) -> str | None:
        return self.served.api_key_sha256 if self.served else None

    def _refusal(self, model: LoadedModel | None, fmt: str, tile: int, overlap: int,
                 direction: str) -> Response | None:
        """The answer to a request refused before its body is read, or None."""
        if model is None:
            return error(503, f"model not loaded: {self.load_error}")
        problem = tiling_problem(tile, overlap)
        if problem:
            return error(400, problem)
        try:  # a format we cannot write, a direction the model lacks
            codec.check_format(fmt)
            model.net(direction)
        except codec.RequestError as e:
            return error(e.status, e.message)
        except Img2ImgError as e:
            return error(400, str(e))
        return None

    async def _refuse(self, request: Request, response: Response) -> Response:
        """`response` to a request refused before its body was read, once that body, if it is on
        its way, has been read and dropped within the upload limit (serving.body.discard: an
        answer sent over unread bytes can be lost to a reset connection)."""
        try:
            await asyncio.wait_for(discard(request), timeout=self.options.upload_timeout_s)
        except (ClientDisconnect, TimeoutError, asyncio.TimeoutError):
            pass  # the answer goes out all the same
        return response

    @api.post("/enhance")
    async def enhance(self, request: Request, format: str = "png", tile: int | None = None,
                      overlap: int | None = None, direction: str = "AtoB", version: str | None = None):
        if not authorised(request, self._key_sha256()):
            return await self._refuse(request, error(401, "missing or wrong API key (Authorization: Bearer KEY)"))
        model = self.model  # requests in flight keep the model they started with
        tile = self.options.tile if tile is None else tile
        overlap = self.options.overlap if overlap is None else overlap
        refused = self._refusal(model, format, tile, overlap, direction)
        if refused is not None:
            return await self._refuse(request, refused)
        if version not in (None, "champion", "challenger"):
            return await self._refuse(request, error(400, f"version must be champion or challenger, got {version[:40]!r}"))
        upload_limit = self.options.upload_timeout_s
        try:  # the upload has its own limit: a slow uplink is not the image's fault
            body = await asyncio.wait_for(read_body(request, self.options.max_pixels), timeout=upload_limit)
        except codec.RequestError as e:  # a 413 closes the connection: the client must not send the body
            return error(e.status, e.message, {"Connection": "close"} if e.status == 413 else None)
        except HTTPException as e:  # Starlette's own parse errors (a malformed multipart body): 4xx
            return error(e.status_code, f"bad request body: {e.detail}")
        except ClientDisconnect:  # no one is left to read an answer
            log.info("client went away during the upload")
            return error(499, "the client closed the connection during the upload")
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            return error(*upload_too_slow(upload_limit))
        args = (body, format, tile, overlap, direction)
        if self.routes_to_challenger(version):  # a canary's share: the challenger answers, or the champion does
            answered = await self.ask_challenger(*args, limit=self.options.compute_limit_s())
            if answered is not None:
                return answered
            return await self._timed(model, *args, request=request, fallback=True)
        return await self._timed(model, *args, request=request)

    async def _timed(self, model: LoadedModel, body: bytes, fmt: str, tile: int, overlap: int, direction: str,
                     request: Request | None = None, fallback: bool = False) -> Response:
        """The champion's answer, its latency recorded (and the request mirrored) during a rollout."""
        t0 = time.perf_counter()
        response = await self._respond(model, body, fmt, tile, overlap, direction, request)
        self.after_champion(response, time.perf_counter() - t0, (body, fmt, tile, overlap, direction),
                            self.options.compute_limit_s(), fallback)
        return response

    async def answer(self, body: bytes, fmt: str, tile: int, overlap: int, direction: str
                     ) -> tuple[int, bytes, str, dict[str, str]]:
        """A request's answer for the ingress of a rollout (this replica serves the challenger),
        through a DeploymentHandle -> (HTTP status, body, media type, headers)."""
        model = self.model
        response = self._refusal(model, fmt, tile, overlap, direction)
        if response is None:
            response = await self._respond(model, body, fmt, tile, overlap, direction, None)
        return (response.status_code, bytes(response.body), response.media_type or "application/octet-stream",
                {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")})

    async def _respond(self, model: LoadedModel, body: bytes, format: str, tile: int, overlap: int,
                       direction: str, request: Request | None) -> Response:
        """Enhance `body` with `model` within the compute limit -> the image or a JSON error.
        Given the HTTP `request`, its computation stops when the client goes away."""
        options = self.options  # as configured now, once the body has arrived
        limit = options.compute_limit_s()  # compute, from now: the body has arrived
        gone = threading.Event()
        watcher = (asyncio.create_task(cancel_on_disconnect(request, gone, asyncio.current_task()))
                   if request is not None else None)
        try:
            data, media, decoded, stages, net = await asyncio.wait_for(
                self._process(body, model, options, direction, format, tile, overlap, time.monotonic() + limit,
                              gone.is_set),
                timeout=limit)
        except asyncio.CancelledError:  # the client went away (or the replica stops): free the compute thread
            gone.set()
            log.info("request cancelled (client gone); its computation stops at the next tile pass")
            raise
        except tiling.Cancelled:  # the compute thread saw the client gone before this task's cancel arrived
            return error(499, "the client closed the connection; its computation was stopped")
        except codec.RequestError as e:
            return error(e.status, e.message)
        except (TimeoutError, asyncio.TimeoutError):
            return error(*compute_too_slow(limit))
        except Exception as e:  # a bug or a dying worker: JSON 500 (clients retry it), never a bare drop
            log.exception("enhance failed")
            return error(500, f"internal error: {type(e).__name__}")
        finally:
            if watcher is not None:
                watcher.cancel()
        headers = {"X-Model-Name": model.name, "X-Model-Version": model.version, "X-Model-Variant": model.variant,
                   "X-Model-Runtime": net.name, "X-Model-Threads": str(net.threads),
                   "X-Model-Precision": "fp32" if decoded.high_bit else net.precision,
                   "X-Direction": direction, "X-Input-Frames": str(decoded.frames), "X-Scale": str(decoded.scale),
                   "X-Bit-Depth": str(decoded.bits if media in ("image/png", "image/tiff") else 8),
                   "Server-Timing": server_timing(stages)}
        return Response(content=data, media_type=media, headers=headers)

    async def _process(self, body: bytes, model: LoadedModel, options: ReplicaOptions, direction: str, fmt: str,
                       tile: int, overlap: int, deadline: float, cancelled: Callable[[], bool]
                       ) -> tuple[bytes, str, codec.DecodedImage, dict[str, float], Any]:
        """-> (encoded output, media type, the decoded input, seconds per stage for Server-Timing,
        the runtime that ran it). The compute thread, which cancelling this coroutine cannot stop,
        stops between tile passes once `deadline` (time.monotonic()) has passed or `cancelled()`."""
        max_pixels = options.max_pixels
        if options.max_batch_size <= 1:  # no batching: the whole request in one thread hop
            return await on_compute_thread(enhance_alone, body, max_pixels, model, direction, fmt, tile, overlap,
                                           deadline, cancelled)
        t0 = time.perf_counter()
        decoded = await on_compute_thread(codec.decode, body, max_pixels, codec.DEPLOY_COMMAND, model.descriptor.scale)
        codec.check_output(fmt, decoded)
        t1 = time.perf_counter()
        net, tiles, plan = await on_compute_thread(split_for, model, direction, decoded, tile, overlap)
        precise = decoded.high_bit  # 16-bit images stay fp32
        outs = await asyncio.gather(*(self.run_tiles((model, net, tiles[i:i + 1], precise))
                                      for i in range(len(tiles))))
        merged = await on_compute_thread(lambda: tiling.merge(torch.cat(outs), plan))
        t2 = time.perf_counter()
        data, media = await on_compute_thread(codec.encode, merged, decoded, fmt)
        return data, media, decoded, {"decode": t1 - t0, "model": t2 - t1, "encode": time.perf_counter() - t2}, net

    @api.get("/", include_in_schema=False)
    async def page(self):
        """The before/after web page (needs no API key: it holds none; it asks for one when needed)."""
        return web_response("index.html")

    @api.get("/web/{name}", include_in_schema=False)
    async def page_file(self, name: str):
        return web_response(name)

    @api.get("/rollout")
    async def rollout(self, request: Request):
        """The current (or last) rollout: plan, state, per-version numbers (serving.rollout)."""
        if not authorised(request, self._key_sha256()):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return await self.rollout_summary()

    @api.post("/rollout/claim", include_in_schema=False)
    async def claim(self, request: Request, token: str, what: str = "changing the rollout", ttl_s: float = 900):
        """Serialises the clients that start or end a rollout (serving/rollouts.py): 200
        {"held_by": null} when this client may go on, else the one-line reason."""
        if not authorised(request, self._key_sha256()):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return {"held_by": await self.rollout_claim(token, what[:200], min(max(ttl_s, 1.0), 3600.0))}

    @api.delete("/rollout/claim", include_in_schema=False)
    async def release(self, request: Request, token: str):
        if not authorised(request, self._key_sha256()):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        await self.rollout_release(token)
        return {"released": True}

    @api.get("/healthz")
    async def healthz(self):
        if self.model is None:
            return error(503, f"model not loaded: {self.load_error}")
        return {"status": "ok", "model": self.model.name, "version": self.model.version}

    @api.get("/model")
    async def model_info(self):
        if self.model is None:
            return error(503, f"model not loaded: {self.load_error}")
        return {**self.model.info(), "load_error": self.load_error, "config_id": self.config_id,
                "initial_torch_threads": self.initial_threads, "reserved_cpus": _reserved_cpus(),
                "retains_freed_memory": self.retains_freed_memory,
                "api_key_required": bool(self._key_sha256()), "max_pixels": self.options.max_pixels,
                "request_timeout_s": self.options.compute_limit_s()}


app = Enhancer.bind(RolloutLedger.bind())  # the enhancer app: its ingress and its rollout ledger
challenger = Enhancer.bind()  # a rollout's challenger app (serving.configs.CHALLENGER_IMPORT_PATH)
