"""The options of a deployed enhancer, declared once as two types: `ReplicaOptions` (what a
replica does with a request: tiles, batching, limits, timeouts, runtime; they travel in the
deployment's user_config, so they change without restarting replicas) and `Scaling` (how many
replicas, how big, how busy: autoscaling, max_ongoing_requests, the CPUs/GPUs each reserves).

Each field carries its default, its range check and its `Flag` (how `img2img serve deploy`
spells it, its help, its unit); the CLI options (img2img_cli/commands/serve.py), the `deploy()` call
(serving/deploy.py), the shipped configs (serving/configs.py) and the replica's parsing
(serving/app.py: `parse_user_config`) are all derived from these fields. A bad value raises
`Img2ImgError` with one line naming the flag, whichever path built the options."""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.errors import Img2ImgError
from translator import MEMORY_FORMATS, OVERLAP, PRECISIONS, RUNTIMES, TILE, MemoryFormat, Precision  # noqa: F401
from translator import RuntimeName as Runtime

# The default pixel limit: every photo phones and cameras write, 64 MP phone sensors (9248 x 6936 =
# 64.1 MP) and 61 MP full-frame cameras (9504 x 6336) included. Tiles bound the model's memory, not
# the whole-image buffers (decoded pixels, tiles, outputs, blend, encode): ~100 bytes a pixel, so
# 72 MP costs ~7 GB per request in flight (benchmarks/large_photos.py; docs/your-own-photos.md).
MAX_PIXELS = 72_000_000
# Requests share a replica's CPUs (up to max_ongoing_requests at once), so the longest one takes
# a few times what it takes alone; the limit is never under a minute.
SLOWDOWN, MIN_REQUEST_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S = 3.0, 60.0, 600.0
SHUTDOWN_MARGIN_S = 15.0  # a planned stop outlasts the request limit by this much
AUTOSCALING, ACTOR = "autoscaling_config", "ray_actor_options"  # sections of a Serve deployment


@dataclass(frozen=True)
class Flag:
    """How `img2img serve deploy` spells a field: option `name` (e.g. "--batch-wait-ms"), its
    `help`, and its unit: the option's value is the field's value times `scale` (ms for a field
    in seconds: 1000); `unit` is named in refusals ("seconds"). `section`: where a `Scaling`
    field goes in the Serve deployment ("autoscaling_config", "ray_actor_options", or "" for the
    deployment itself); replica options all go to its user_config."""

    name: str
    help: str
    scale: float = 1.0
    unit: str = ""
    section: str = ""

    @property
    def param(self) -> str:
        """The Python name of the option ("--batch-wait-ms" -> "batch_wait_ms")."""
        return self.name.removeprefix("--").replace("-", "_")


def flag_of(field) -> Flag | None:
    """The `Flag` in a pydantic field's metadata, or None (a field with no CLI option)."""
    return next((m for m in field.metadata if isinstance(m, Flag)), None)


_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


class Options(BaseModel):
    """Immutable, checked on construction: a bad value raises Img2ImgError naming its flag."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise Img2ImgError(refusal(type(self), e)) from None

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """{field name: its Flag}, in declaration order, for the fields the CLI offers."""
        return {name: flag for name, f in cls.model_fields.items() if (flag := flag_of(f)) is not None}

    @classmethod
    def from_flags(cls, given: dict[str, Any]):
        """The options from CLI values keyed by `Flag.param` (in the option's unit; None or
        absent: the field's default). Keys of other types are ignored."""
        values = {}
        for name, flag in cls.flags().items():
            value = given.get(flag.param)
            if value is None:
                continue
            if flag.scale != 1:
                value = value / flag.scale
                if cls.model_fields[name].annotation is int and math.isfinite(value):
                    value = int(value)  # e.g. megapixels -> pixels; nan and inf are refused below
            values[name] = value
        return cls(**values)


def refusal(cls: type[BaseModel], error: ValidationError) -> str:
    """One line for the first problem of a ValidationError, naming the field's flag in its unit,
    e.g. "--request-timeout must be > 0 seconds, got 0"."""
    e = error.errors()[0]
    field = cls.model_fields.get(str(e["loc"][0])) if e["loc"] else None
    flag = flag_of(field) if field is not None else None
    if flag is None:
        name = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            return f"unknown option {name!r}; known: {', '.join(cls.model_fields)}"
        return f"{name}: {e['msg']}" if name else str(e["msg"]).removeprefix("Value error, ")
    value, kind, ctx = e.get("input"), e["type"], e.get("ctx") or {}
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    shown = f"{value * flag.scale:g}" if number else repr(value)
    if kind == "literal_error":
        choices = next((typing.get_args(a) for a in (field.annotation, *typing.get_args(field.annotation))
                        if typing.get_origin(a) is Literal), ())
        return f"{flag.name} must be {' or '.join(choices)}, got {value!r}"
    if kind == "finite_number":
        return f"{flag.name} must be a finite number, got {shown}"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        unit = f" {flag.unit}" if flag.unit else ""
        return f"{flag.name} must be {op} {ctx[key] * flag.scale:g}{unit}, got {shown}"
    if kind == "value_error":
        return str(e["msg"]).removeprefix("Value error, ")
    return f"{flag.name}: {e['msg']}, got {shown}"


class ReplicaOptions(Options):
    """What a replica does with a request; every field travels in the user_config.

    tile / overlap: default tile edge and overlap in pixels for large images (a request may
    override them; 16 <= tile <= 4096, 0 <= overlap < tile/2). max_pixels: larger images get 413
    (the default takes what phones and cameras write, see MAX_PIXELS). max_batch_size /
    batch_wait_timeout_s: tiles of concurrent requests run together, up to this many, waiting at
    most this many seconds to fill a batch (1 = off: measured slower on CPU). runtime: auto
    (torch on GPU; on CPU the fastest of onnx, torch fp32 and torch bf16, timed on the model at
    start per image size: registry.loading.load) | torch | onnx. threads: intra-op threads per
    replica (None: floor(Scaling.num_cpus), at least 1). memory_format, precision: torch only.
    request_timeout_s: seconds of compute, counted from when the request's body has arrived,
    before it is answered 504 (None: `serve deploy` sizes it from the replica's measured speed;
    a replica given none uses DEFAULT_REQUEST_TIMEOUT_S). upload_timeout_s: seconds the body may
    take to arrive before the request is answered 408; generous, for phones on weak uplinks: 900 s
    carries a 24 MP camera JPEG (about 12 MB) at 0.1 Mbit/s, and the largest body the default
    72 MP limit admits (577 MB: 16-bit RGBA, 8 bytes a pixel, plus 1 MB) at 5.2 Mbit/s.
    background: set by a shadow rollout on its challenger only (no CLI option)."""

    tile: Annotated[int, Flag("--tile", "default tile size for large images")] = TILE
    overlap: Annotated[int, Flag("--overlap", "default tile overlap")] = OVERLAP
    max_pixels: Annotated[int, Field(gt=0), Flag(
        "--max-megapixels", "larger images get 413 (the default takes 64 MP phone and 61 MP camera photos; "
        "each request in flight holds ~100 bytes a pixel)", scale=1e-6)] = MAX_PIXELS
    max_batch_size: Annotated[int, Field(ge=1), Flag(
        "--max-batch-size", "tiles batched together across requests (1 = off: measured slower on CPU; "
        "try 8 on a GPU)")] = 1
    batch_wait_timeout_s: Annotated[float, Field(ge=0), Flag(
        "--batch-wait-ms", "how long a batch waits to fill", scale=1000)] = 0.01
    runtime: Annotated[Runtime, Flag(
        "--runtime", "auto (torch on GPU; on CPU the fastest of onnx, torch fp32 and torch bf16 (kept unless "
        "another is 10% faster), timed on the model at start for images up to 512x512 px and for larger "
        "ones; GET /model shows runtime_choice) | torch | onnx")] = "auto"
    threads: Annotated[int | None, Field(ge=1), Flag(
        "--threads", "intra-op threads per replica (default: floor(--num-cpus), min 1)")] = None
    memory_format: Annotated[MemoryFormat, Flag(
        "--memory-format", "torch only: channels_last | contiguous")] = "channels_last"
    precision: Annotated[Precision, Flag(
        "--precision", "torch only: auto (bf16 where native, faster and within one 8-bit level of fp32) "
        "| fp32 | bf16")] = "auto"
    request_timeout_s: Annotated[float | None, Field(gt=0), Flag(
        "--request-timeout", "seconds of compute (from when the body has arrived) before a request is "
        "answered 504 (default: sized from the pixel limit and the measured model speed)",
        unit="seconds")] = None
    upload_timeout_s: Annotated[float, Field(gt=0), Flag(
        "--upload-timeout", "seconds a request's body may take to arrive before it is answered 408 "
        "(compute is timed from then on)", unit="seconds")] = 900.0
    # A shadow's challenger: its computations run at the lowest OS priority (SCHED_IDLE), so on CPUs it
    # shares with the champion the mirrored requests take what the champion leaves (serving.rollouts).
    background: bool = False

    @model_validator(mode="after")
    def _tiling(self) -> ReplicaOptions:
        # Checked here too, not only per request: a bad default would fail every request.
        problem = tiling_problem(self.tile, self.overlap)
        if problem:
            raise ValueError(f"--tile/--overlap: {problem}")
        return self

    def model_build(self, threads: int) -> dict[str, Any]:
        """The keyword arguments of `registry.loading.load` these options set, with `threads`
        resolved (a replica reloads its model when they change)."""
        return {"runtime": self.runtime, "threads": threads, "memory_format": self.memory_format,
                "precision": self.precision}

    def compute_limit_s(self) -> float:
        """The compute limit a replica applies: request_timeout_s, or the default when unsized."""
        return DEFAULT_REQUEST_TIMEOUT_S if self.request_timeout_s is None else self.request_timeout_s


class Scaling(Options):
    """How many replicas serve, what each reserves, and how many requests each takes: the
    deployment's autoscaling_config, max_ongoing_requests and ray_actor_options (changing them
    restarts replicas only where Ray Serve must).

    min_replicas / max_replicas: autoscaling bounds (max None: 2, or min_replicas when higher;
    1 <= min <= max). target_ongoing_requests: requests per replica the autoscaler aims for.
    max_ongoing_requests: requests a replica takes at once (None: 16, or twice
    ReplicaOptions.max_batch_size when higher, so a batch can fill). upscale_delay_s /
    downscale_delay_s: seconds a load change must last before replicas are added / removed.
    num_cpus / num_gpus: each replica's Ray reservation."""

    min_replicas: Annotated[int, Flag("--min-replicas", "autoscaling lower bound", section=AUTOSCALING)] = 1
    max_replicas: Annotated[int | None, Flag(
        "--max-replicas", "autoscaling upper bound (default: 2, or --min-replicas if higher)", section=AUTOSCALING)] = None
    target_ongoing_requests: Annotated[float, Field(gt=0), Flag(
        "--target-ongoing-requests", "requests per replica the autoscaler aims for", section=AUTOSCALING)] = 2.0
    max_ongoing_requests: Annotated[int | None, Field(ge=1), Flag(
        "--max-ongoing-requests", "requests a replica takes at once (default: 16, or 2 x --max-batch-size "
        "if higher)")] = None
    upscale_delay_s: Annotated[float, Field(ge=0), Flag(
        "--upscale-delay", "seconds of high load before a replica is added", unit="seconds",
        section=AUTOSCALING)] = 5.0
    downscale_delay_s: Annotated[float, Field(ge=0), Flag(
        "--downscale-delay", "seconds of low load before a replica is removed", unit="seconds",
        section=AUTOSCALING)] = 30.0
    num_cpus: Annotated[float, Field(gt=0), Flag("--num-cpus", "CPUs reserved per replica", section=ACTOR)] = 0.5
    num_gpus: Annotated[float, Field(ge=0), Flag("--num-gpus", "GPUs reserved per replica", section=ACTOR)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _default_max(cls, data: Any) -> Any:
        # A typed lower bound is never refused because of a default upper one.
        if isinstance(data, dict) and data.get("max_replicas") is None and isinstance(data.get("min_replicas", 1), int):
            data = {**data, "max_replicas": max(2, data.get("min_replicas", 1))}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if not 1 <= self.min_replicas <= (self.max_replicas or 0):
            raise ValueError(f"need 1 <= --min-replicas ({self.min_replicas}) <= --max-replicas ({self.max_replicas})")
        return self

    def ongoing_limit(self, replica: ReplicaOptions) -> int:
        """max_ongoing_requests, or the default sized for `replica`'s batches."""
        return self.max_ongoing_requests or max(16, replica.max_batch_size * 2)


class ServedModel(BaseModel):
    """The model a replica serves, filled in by `serve deploy` (not a user option): registered
    name and version, the MLflow tracking URI, the version's run id (a re-registered version
    with new weights reloads), and the sha256 hex digest of the API key (None: no key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    model_name: str
    model_version: str
    tracking_uri: str
    model_run_id: str | None = None
    api_key_sha256: str | None = None


def parse_user_config(config: dict[str, Any], options: type[ReplicaOptions] = ReplicaOptions
                      ) -> tuple[ServedModel, ReplicaOptions]:
    """A replica's user_config -> (the served model, its `options`); keys left out take the
    defaults. Raises Img2ImgError (one line) for an unknown key or a bad value."""
    model_keys = set(ServedModel.model_fields)
    try:
        served = ServedModel(**{k: v for k, v in config.items() if k in model_keys})
    except ValidationError as e:
        raise Img2ImgError(f"user_config {refusal(ServedModel, e)}") from None
    return served, options(**{k: v for k, v in config.items() if k not in model_keys})


def time_limits(max_pixels: int, seconds_per_megapixel: float | None,
                request_timeout_s: float | None = None) -> tuple[float, float]:
    """-> (request_timeout_s, graceful_shutdown_timeout_s), in seconds.

    The longest request a deployment accepts is `max_pixels` at the replica's measured speed
    (seconds per megapixel on its device), times SLOWDOWN for concurrent requests. Requests past
    the limit get a JSON 504; a planned replica stop waits SHUTDOWN_MARGIN_S longer than the
    limit, so every accepted request finishes or is answered before the replica goes away."""
    if request_timeout_s is None:
        if seconds_per_megapixel is None:
            request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S
        else:
            longest = max_pixels / 1e6 * seconds_per_megapixel
            request_timeout_s = max(MIN_REQUEST_TIMEOUT_S, math.ceil(SLOWDOWN * longest))
    return float(request_timeout_s), float(request_timeout_s + SHUTDOWN_MARGIN_S)


def tiling_problem(tile: int, overlap: int) -> str | None:
    """What is wrong with a tile edge / overlap (pixels), or None: 16 <= tile <= 4096 and
    0 <= overlap < tile/2 (so the overlaps of a tile's two sides never meet)."""
    if not 16 <= tile <= 4096 or not 0 <= overlap < tile // 2:
        return f"tile must be 16-4096 and overlap in [0, tile/2), got tile {tile}, overlap {overlap}"
    return None


DEFAULTS, SCALING = ReplicaOptions(), Scaling()


def config_id(user_config: dict[str, Any]) -> str:
    """16-hex digest of a user_config: the replica reports it (GET /model) once it has applied
    that config, and `serve deploy` waits for the digest of what it sent."""
    return hashlib.sha256(json.dumps(user_config, sort_keys=True).encode()).hexdigest()[:16]
