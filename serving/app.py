"""The Ray Serve application `enhancer`: a FastAPI ingress over an autoscaling deployment.

Each replica loads the registered model named in its user_config once, warms it up, and
serves POST /enhance, GET /healthz, GET /model and the web page (GET /, from serving/web). Tiles of concurrent requests are batched
together through `@serve.batch`. A new user_config (a promotion, `serve deploy` again) loads
the new model beside the old one and swaps it in; requests already running finish on the old.
"""


import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from serving import codec
from serving.model import LoadedModel, load
from translator import tiling

log = logging.getLogger("img2img.serve")
api = FastAPI(title="img2img enhancer", description="Image enhancement with a registered img2img model.")
DEFAULTS = {"max_pixels": 16_000_000, "tile": 512, "overlap": 32, "max_batch_size": 8, "batch_wait_timeout_s": 0.01}


WEB_DIR = Path(__file__).with_name("web")
# The page's files, by name (no path from the URL ever reaches the file system).
WEB_FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
             "app.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
# The page talks only to this origin: no CDN, no third-party anything.
WEB_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def web_response(name: str) -> Response:
    if name not in WEB_FILES:
        return error(404, f"no page file {name!r}")
    try:
        body = (WEB_DIR / name).read_bytes()  # small files; read each time so an edit shows at once
    except OSError:  # a broken install; the API itself still works
        return error(500, f"the web page file {name} is missing from the installed package")
    return Response(body, media_type=WEB_FILES[name], headers=WEB_HEADERS)


@serve.deployment(name="Enhancer", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16)
@serve.ingress(api)
class Enhancer:
    def __init__(self):
        self.model: LoadedModel | None = None
        self.load_error = "no model configured yet"
        self.cfg = dict(DEFAULTS)
        self.config_id = ""

    def reconfigure(self, config: dict) -> None:
        cfg = {**DEFAULTS, **config}
        self.run_tiles.set_max_batch_size(int(cfg["max_batch_size"]))
        self.run_tiles.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        current = self.model
        if current is None or (current.name, current.version) != (cfg["model_name"], str(cfg["model_version"])):
            try:
                new = load(cfg["tracking_uri"], cfg["model_name"], str(cfg["model_version"]))
                new.enhance(torch.zeros(1, 3, 64, 64))  # warm-up: first real request is not slow
                self.model, self.load_error = new, None
                log.info("serving %s v%s (%s)", new.name, new.version, new.variant)
            except Exception as e:  # keep serving the old model (or 503) instead of dying
                self.load_error = f"could not load {cfg.get('model_name')} v{cfg.get('model_version')}: {e}"
                log.exception("model load failed")
        self.cfg = cfg
        # Lets `img2img serve deploy` see when this exact config has been applied.
        self.config_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_tiles(self, items: list[tuple[LoadedModel, torch.Tensor]]) -> list[torch.Tensor]:
        """Tiles from concurrent requests, run together (grouped by model and tile shape)."""
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (model, tile) in enumerate(items):
            groups.setdefault((id(model), tuple(tile.shape)), []).append(i)

        def run():
            with torch.inference_mode():
                for idx in groups.values():
                    model = items[idx[0]][0]
                    batch = torch.cat([items[i][1] for i in idx]).to(model.device)
                    result = model.generator(batch).float().cpu()
                    for j, i in enumerate(idx):
                        out[i] = result[j:j + 1]

        await asyncio.to_thread(run)
        return out

    def _authorised(self, request: Request) -> bool:
        want = self.cfg.get("api_key_sha256")
        if not want:
            return True
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), want)

    async def _body(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise codec.RequestError(400, "multipart request without a 'file' field")
            return await upload.read()
        if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
            raise codec.RequestError(415, f"content type {ctype!r} is not an image: send image/* or multipart 'file'")
        return await request.body()

    @api.post("/enhance")
    async def enhance(self, request: Request, format: str = "png", tile: int | None = None,
                      overlap: int | None = None):
        if not self._authorised(request):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        model = self.model  # requests in flight keep the model they started with
        if model is None:
            return error(503, f"model not loaded: {self.load_error}")
        tile = tile or self.cfg["tile"]
        overlap = self.cfg["overlap"] if overlap is None else overlap
        if not 16 <= tile <= 4096 or not 0 <= overlap < tile // 2:
            return error(400, "tile must be 16-4096 and overlap in [0, tile/2)")
        try:
            body = await self._body(request)
            decoded = await asyncio.to_thread(codec.decode, body, int(self.cfg["max_pixels"]))
            tiles, plan = tiling.split(decoded.tensor, tile, overlap, model.multiple)
            outs = await asyncio.gather(*(self.run_tiles((model, tiles[i:i + 1])) for i in range(len(tiles))))
            merged = tiling.merge(torch.cat(outs), plan)
            data, media = await asyncio.to_thread(codec.encode, merged, decoded, format)
        except codec.RequestError as e:
            return error(e.status, e.message)
        headers = {"X-Model-Name": model.name, "X-Model-Version": model.version, "X-Model-Variant": model.variant}
        return Response(content=data, media_type=media, headers=headers)

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
                "api_key_required": bool(self.cfg.get("api_key_sha256"))}


app = Enhancer.bind()
