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
the size limit is refused 413 before any of it is read. Planned replica stops (downscale,
redeploy, `serve rm`) wait `graceful_shutdown_timeout_s`, longer than that limit, so accepted
requests finish. Unpaired models serve `?direction=AtoB|BtoA`.
"""


import asyncio
import concurrent.futures
import functools
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cluster.errors import Img2ImgError
from serving import codec
from serving.limits import cancel_on_disconnect, compute_too_slow, upload_too_slow
from serving.model import LoadedModel, load
from serving.options import DEFAULTS as OPTIONS
from serving.options import config_id, tiling_problem
from serving.runtime import threads_for
from translator import tiling
from translator.allocator import retain_freed_memory

log = logging.getLogger("img2img.serve")
api = FastAPI(title="img2img enhancer", description="Image enhancement with a registered img2img model.")
DEFAULTS = OPTIONS.user_config()  # what a user_config leaves out
RUNTIME_KEYS = ("model_name", "model_version", "model_run_id", "runtime", "threads", "memory_format", "precision")
RETRY_AFTER_S = 5
# Tiles per forward pass of one request: all tiles at once would hold every tile's activations
# (GBs on CPU); on a CPU one at a time is also fastest (1024x1024 in 512 px tiles: 1.17 s one by
# one vs 2.28 s four at a time, torch bf16, 2 threads: benchmarks/RESULTS.md). GPUs keep 4.
CPU_TILES_PER_PASS, GPU_TILES_PER_PASS = 1, 4


def tiles_per_pass(device: str) -> int:
    """How many tiles of one request go through the model together on `device` ("cpu", "cuda")."""
    return CPU_TILES_PER_PASS if device == "cpu" else GPU_TILES_PER_PASS


def _reserved_cpus() -> float | None:
    try:
        import ray

        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside a Ray worker
        return None


def group_tiles(items: list[tuple[Any, Any, torch.Tensor, bool]]) -> dict[tuple, list[int]]:
    """Which of a batch's items can run as one forward pass: (id(runtime), tile shape, precise)
    -> item indices in arrival order. `precise` tiles (of 16-bit images) always run fp32, so they
    never share a pass with the others; every index lands in exactly one group."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, net, tile, precise) in enumerate(items):
        groups.setdefault((id(net), tuple(tile.shape), precise), []).append(i)
    return groups


def run_grouped(items: list[tuple[Any, Any, torch.Tensor, bool]], per_pass: int | None = None,
                deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> list[torch.Tensor]:
    """Run a batch of (model, runtime, tile (1, C, H, W), precise) items, one `runtime.run` per
    group of `group_tiles` (at most `per_pass` tiles each, when given) -> each item's own output
    (1, C, H', W'), in the items' order. Before each pass: raises TimeoutError once `deadline`
    (time.monotonic() seconds) has passed (a request already answered 504 stops computing), and
    `tiling.Cancelled` once `cancelled()` is True (its client went away)."""
    out: list[torch.Tensor | None] = [None] * len(items)
    with torch.inference_mode():
        for (_, _, precise), idx in group_tiles(items).items():
            net = items[idx[0]][1]
            step = per_pass or len(idx)
            for k in range(0, len(idx), step):
                tiling.stop_if(cancelled)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("request time limit passed")
                part = idx[k:k + step]
                result = net.run(torch.cat([items[i][2] for i in part]), precise)
                for j, i in enumerate(part):
                    out[i] = result[j:j + 1]
    return out


def load_and_measure(*args, **kwargs) -> LoadedModel:
    """`serving.model.load(*args, **kwargs)`, then its speed measured (which warms it up too; the
    speed sizes request time limits). Run on the compute thread: the runtime choice and the
    speed are then measured on the thread that will serve."""
    model = load(*args, **kwargs)
    model.measure_speed()
    return model


def max_body_bytes(max_pixels: int) -> int:
    """The largest request body worth reading for images of up to `max_pixels`: uncompressed
    16-bit RGBA (8 bytes a pixel, e.g. a raw TIFF or BMP) plus 1 MB of headers and metadata."""
    return max_pixels * 8 + 1_000_000


def split_for(model: LoadedModel, direction: str, decoded: codec.DecodedImage, tile: int, overlap: int):
    """-> (the runtime for this direction and image size, tiles (N, 3, t, t) of the decoded image
    in [-1, 1], the plan `tiling.merge` needs): what both request paths do before the model."""
    image = decoded.tensor
    net = model.net(direction, image.shape[-2] * image.shape[-1])
    return (net, *tiling.split(image, tile, overlap, model.multiple))


def enhance_alone(body: bytes, max_pixels: int, model: LoadedModel, direction: str, fmt: str, tile: int,
                  overlap: int, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
                  ) -> tuple[bytes, str, codec.DecodedImage, dict[str, float], Any]:
    """One request end to end in the calling thread (batching off): decode, tiles through the
    model's runtime for this direction and image size (`tiles_per_pass` at a time), merge, encode
    -> (data, media type, decoded input, seconds per stage, the runtime). Raises
    `codec.RequestError` for bad input, as the batched path does; between passes, TimeoutError
    once `deadline` (time.monotonic()) has passed and `tiling.Cancelled` once `cancelled()`."""
    tiling.stop_if(cancelled)  # its client left while it waited for the compute thread
    t0 = time.perf_counter()
    decoded = codec.decode(body, max_pixels)
    codec.check_output(fmt, decoded)
    t1 = time.perf_counter()
    net, tiles, plan = split_for(model, direction, decoded, tile, overlap)
    outs = run_grouped([(model, net, tiles[i:i + 1], decoded.high_bit) for i in range(len(tiles))],
                       per_pass=tiles_per_pass(net.device), deadline=deadline, cancelled=cancelled)
    merged = tiling.merge(torch.cat(outs), plan)
    t2 = time.perf_counter()
    data, media = codec.encode(merged, decoded, fmt)
    return data, media, decoded, {"decode": t1 - t0, "model": t2 - t1, "encode": time.perf_counter() - t2}, net


def server_timing(stages: dict[str, float]) -> str:
    """{stage: seconds} -> an HTTP `Server-Timing` value in milliseconds (W3C Server Timing;
    browsers' developer tools chart it), e.g. `decode;dur=1.2, model;dur=44.0, encode;dur=2.1`."""
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in stages.items())


WEB_DIR = Path(__file__).with_name("web")
# The page's files, by name (no path from the URL ever reaches the file system).
WEB_FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
             "app.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
# The page talks only to this origin: no CDN, no third-party anything.
WEB_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The endpoint's error answer: JSON `{"error": message}` with HTTP `status`, `Retry-After`
    (seconds) on a 503, plus any `headers` given."""
    headers = {**({"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}), **(headers or {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


@api.exception_handler(RequestValidationError)
async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A query parameter of the wrong type (`?tile=abc`): 400 with the endpoint's JSON error shape,
    not FastAPI's 422 `{"detail": [...]}`."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                         for e in exc.errors())
    return error(400, f"bad request parameters: {problems}")


def web_response(name: str) -> Response:
    if name not in WEB_FILES:
        return error(404, f"no page file {name!r}")
    try:
        body = (WEB_DIR / name).read_bytes()  # small files; read each time so an edit shows at once
    except OSError:  # a broken install; the API itself still works
        return error(500, f"the web page file {name} is missing from the installed package")
    return Response(body, media_type=WEB_FILES[name], headers=WEB_HEADERS)


# Every model computation of a replica runs on one thread (`compute_thread`): libgomp keeps an
# OpenMP team per calling thread, and once teams outnumber the CPUs it stops spinning between
# regions; on asyncio's rotating pool a 256x256 NAFNet pass was ~50% slower (35 vs 50-70 ms on
# 2 cores; benchmarks/RESULTS.md). One thread keeps one team, as in a plain script.
# Created on first use: Ray pickles this module's app, and an executor does not pickle.
_compute: concurrent.futures.ThreadPoolExecutor | None = None
T = TypeVar("T")


def compute_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one-thread executor every model computation of this process runs on."""
    global _compute
    if _compute is None:
        _compute = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="img2img-compute")
    return _compute


async def on_compute_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on the compute thread, awaited; its exceptions propagate."""
    return await asyncio.get_running_loop().run_in_executor(compute_thread(), functools.partial(fn, *args, **kwargs))


@serve.deployment(name="Enhancer", ray_actor_options={"num_cpus": OPTIONS.num_cpus}, max_ongoing_requests=16)
@serve.ingress(api)
class Enhancer:
    def __init__(self):
        self.model: LoadedModel | None = None
        self.load_error = "no model configured yet"
        self.cfg = dict(DEFAULTS)
        self.config_id = ""
        self.model_key: tuple = ()
        self.initial_threads = torch.get_num_threads()  # what Ray's worker env gave torch
        # Freed activations stay in the process: page-faulting them back in cost 25-30% of a
        # 256x256 pass (translator/allocator.py).
        self.retains_freed_memory = retain_freed_memory()

    def reconfigure(self, config: dict) -> None:
        cfg = {**DEFAULTS, **config}
        self.run_tiles.set_max_batch_size(int(cfg["max_batch_size"]))
        self.run_tiles.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        current = self.model
        key = tuple(str(cfg.get(k)) for k in RUNTIME_KEYS)  # what the loaded model was built from
        if current is None or key != self.model_key:
            try:
                # Intra-op threads match the CPUs this replica reserved (floor, at least 1).
                threads = int(cfg["threads"] or threads_for(_reserved_cpus()))
                new = compute_thread().submit(load_and_measure, cfg["tracking_uri"], cfg["model_name"],
                                     str(cfg["model_version"]), runtime=cfg["runtime"], threads=threads,
                                     memory_format=cfg["memory_format"], precision=cfg["precision"]).result()
                self.model, self.model_key, self.load_error = new, key, None
                log.info("serving %s v%s (%s) on %s", new.name, new.version, new.variant, new.runtime.info())
            except Exception as e:  # keep serving the old model (or 503) instead of dying
                self.load_error = f"could not load {cfg.get('model_name')} v{cfg.get('model_version')}: {e}"
                log.exception("model load failed")
        self.cfg = cfg
        # Lets `img2img serve deploy` see when this exact config has been applied.
        self.config_id = config_id(config)

    @serve.batch(max_batch_size=OPTIONS.max_batch_size, batch_wait_timeout_s=OPTIONS.batch_wait_timeout_s)
    async def run_tiles(self, items: list[tuple[LoadedModel, object, torch.Tensor, bool]]) -> list[torch.Tensor]:
        """Tiles from concurrent requests, run together (see `run_grouped`)."""
        return await on_compute_thread(run_grouped, items)

    def _authorised(self, request: Request) -> bool:
        want = self.cfg.get("api_key_sha256")
        if not want:
            return True
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), want)

    async def _body(self, request: Request) -> bytes:
        limit = max_body_bytes(int(self.cfg["max_pixels"]))
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:  # refused unread: a huge upload never fills memory
            raise codec.RequestError(413, f"request body of {int(length) / 1e6:.0f} MB is over this endpoint's "
                                          f"{limit / 1e6:.0f} MB limit")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise codec.RequestError(400, "multipart request without a 'file' field")
            return await upload.read()
        if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
            raise codec.RequestError(415, f"content type {ctype!r} is not an image: send image/* or multipart 'file'")
        body = bytearray()
        async for chunk in request.stream():  # a body without Content-Length is capped as it arrives
            body += chunk
            if len(body) > limit:
                raise codec.RequestError(413, f"request body is over this endpoint's {limit / 1e6:.0f} MB limit")
        return bytes(body)

    @api.post("/enhance")
    async def enhance(self, request: Request, format: str = "png", tile: int | None = None,
                      overlap: int | None = None, direction: str = "AtoB"):
        if not self._authorised(request):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        model = self.model  # requests in flight keep the model they started with
        if model is None:
            return error(503, f"model not loaded: {self.load_error}")
        tile = self.cfg["tile"] if tile is None else tile
        overlap = self.cfg["overlap"] if overlap is None else overlap
        problem = tiling_problem(tile, overlap)
        if problem:
            return error(400, problem)
        try:  # refused before the body is read: a format we cannot write, a direction the model lacks
            codec.check_format(format)
            model.net(direction)
        except codec.RequestError as e:
            return error(e.status, e.message)
        except Img2ImgError as e:
            return error(400, str(e))
        upload_limit = float(self.cfg["upload_timeout_s"])
        try:  # the upload has its own limit: a slow uplink is not the image's fault
            body = await asyncio.wait_for(self._body(request), timeout=upload_limit)
        except codec.RequestError as e:  # a 413 closes the connection: the client must not send the body
            return error(e.status, e.message, {"Connection": "close"} if e.status == 413 else None)
        except HTTPException as e:  # Starlette's own parse errors (a malformed multipart body): 4xx
            return error(e.status_code, f"bad request body: {e.detail}")
        except ClientDisconnect:  # no one is left to read an answer
            log.info("client went away during the upload")
            return error(499, "the client closed the connection during the upload")
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            return error(*upload_too_slow(upload_limit))
        limit = float(self.cfg["request_timeout_s"])  # compute, from now: the body has arrived
        gone = threading.Event()
        watcher = asyncio.create_task(cancel_on_disconnect(request, gone, asyncio.current_task()))
        try:
            data, media, decoded, stages, net = await asyncio.wait_for(
                self._process(body, model, direction, format, tile, overlap, time.monotonic() + limit, gone.is_set),
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
            watcher.cancel()
        headers = {"X-Model-Name": model.name, "X-Model-Version": model.version, "X-Model-Variant": model.variant,
                   "X-Model-Runtime": net.name, "X-Model-Threads": str(net.threads),
                   "X-Model-Precision": "fp32" if decoded.high_bit else net.precision,
                   "X-Direction": direction, "X-Input-Frames": str(decoded.frames),
                   "X-Bit-Depth": str(decoded.bits if media in ("image/png", "image/tiff") else 8),
                   "Server-Timing": server_timing(stages)}
        return Response(content=data, media_type=media, headers=headers)

    async def _process(self, body: bytes, model: LoadedModel, direction: str, fmt: str, tile: int, overlap: int,
                       deadline: float, cancelled: Callable[[], bool]
                       ) -> tuple[bytes, str, codec.DecodedImage, dict[str, float], Any]:
        """-> (encoded output, media type, the decoded input, seconds per stage for Server-Timing,
        the runtime that ran it). The compute thread, which cancelling this coroutine cannot stop,
        stops between tile passes once `deadline` (time.monotonic()) has passed or `cancelled()`."""
        max_pixels = int(self.cfg["max_pixels"])
        if int(self.cfg["max_batch_size"]) <= 1:  # no batching: the whole request in one thread hop
            return await on_compute_thread(enhance_alone, body, max_pixels, model, direction, fmt, tile, overlap,
                                           deadline, cancelled)
        t0 = time.perf_counter()
        decoded = await on_compute_thread(codec.decode, body, max_pixels)
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
                "api_key_required": bool(self.cfg.get("api_key_sha256")), "max_pixels": int(self.cfg["max_pixels"]),
                "request_timeout_s": float(self.cfg["request_timeout_s"])}


app = Enhancer.bind()
