"""A pipeline as typed data: `pipeline.yaml` (or the flags of `img2img pipeline run`) ->
`PipelineSpec`, checked before anything runs. Every mistake is one Img2ImgError line naming the
file's line and the field (`pipeline.yaml line 7: train.max_steps: ...`).

Pure: nothing is contacted here (the service checks, e.g. that a dataset exists, are in
`pipelines.client.check`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster.errors import Img2ImgError
from pipelines.notify import check_webhook
from registry.refs import parse_ref
from serving.rollout import Limits
from serving.rollout_steps import parse_interval, parse_steps

STEPS = ("ingest", "train", "evaluate", "gate", "deploy", "promote")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestStep(_Strict):
    """`data ingest`'s options (synthetic pairs from a folder or s3:// prefix of photos)."""

    degrade: str = "gaussian:1.5"
    size: int = Field(256, ge=8)
    crops: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    shard_rows: int = Field(256, ge=1)


class TrainStep(_Strict):
    """`train`'s options; `finetune: true` starts from the model's champion, `init_from` from any
    version `img2img train` registered (`NAME@alias` or `NAME/VERSION`, of this model or another):
    both are `train --init-from`, whose variant and config the run adopts."""

    variant: str = "nafnet"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=8)
    lr: float | None = Field(None, gt=0)
    set: dict[str, str | int | float | bool] = Field(default_factory=dict)
    checkpoint_every: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    experiment: str = "img2img"
    finetune: bool = False
    init_from: str | None = None

    @field_validator("init_from")
    @classmethod
    def _init_from(cls, value: str | None) -> str | None:
        if value is not None:
            _one_line(parse_ref, value, "init_from")
        return value

    @model_validator(mode="after")
    def _one_parent(self) -> TrainStep:
        if self.finetune and self.init_from:
            raise ValueError("give finetune: true (start from the model's champion) or init_from: NAME@alias, not both")
        return self


class EvaluateStep(_Strict):
    """The yardstick: the evaluation set the candidate is scored on and the gate compares on
    (default: the model's own evaluation set, else the training dataset's val split)."""

    dataset: str | None = None
    split: Literal["val", "train", "all"] = "val"
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)


class GateStep(_Strict):
    """`models promote`'s rule: `metric` ranks candidate and champion; `force` promotes a
    candidate the rule objects to (worse than the champion or than its input), as `--force`."""

    metric: Literal["psnr", "ssim", "gain_db"] = "psnr"
    force: bool = False


class DeployStep(_Strict):
    """How the candidate reaches the endpoint (only when the endpoint serves this model):
    `rollout: swap` (default) replaces the served version at once (`serve reload`);
    `rollout: canary` runs a stepped canary (`serve canary --steps S --interval I`) and waits for
    it: promoted once its last step has held for `interval` within its guards, aborted (the
    champion kept, the pipeline ending with the reason) when a guard is breached or it has not
    promoted within `timeout` (e.g. no traffic reached the challenger). `limits`: the canary's
    guards (`serving.rollout.Limits`: min_requests, max_error_rate, max_p95_ratio,
    max_sharpness_change, ...), as `serve canary`'s flags."""

    rollout: Literal["swap", "canary"] = "swap"
    steps: str = "10,50,100"
    interval: str = "10m"
    timeout: str = "2h"
    limits: Limits = Field(default_factory=Limits)

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: str) -> str:
        _one_line(parse_steps, value, "--steps")
        return value

    @field_validator("interval", "timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        _one_line(parse_interval, value, "--interval")
        return value

    @property
    def interval_s(self) -> float:
        return parse_interval(self.interval)

    @property
    def timeout_s(self) -> float:
        return parse_interval(self.timeout)

    @property
    def shares(self) -> list[float]:
        return parse_steps(self.steps)


def _one_line(parse, value: str, flag: str) -> None:
    """`parse(value)`, its Img2ImgError as the ValueError pydantic reports (the field named by
    the caller's line number, not the CLI's `flag`)."""
    try:
        parse(value)
    except Img2ImgError as e:
        raise ValueError(str(e).replace(f"{flag} ", "", 1)) from None


class Notify(_Strict):
    """Who hears of the pipeline's decision: `webhook` (an http(s) URL, or `env:NAME` for a URL kept
    in that environment variable on the cluster) receives a JSON summary when a run ends
    (`pipelines.notify`)."""

    webhook: str | None = None

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook(value)


class PipelineSpec(_Strict):
    """One pipeline. `source` (folder or s3://bucket/prefix) is ingested as `dataset`; without a
    source the ingest step is left out and `dataset` must exist. `model`: the registered model
    (default: the dataset name). `steps`: which of STEPS run, in STEPS order (default: all)."""

    name: str | None = None
    source: str | None = None
    dataset: str
    model: str | None = None
    steps: list[Literal["ingest", "train", "evaluate", "gate", "deploy", "promote"]] = Field(
        default_factory=lambda: list(STEPS))
    ingest: IngestStep = Field(default_factory=IngestStep)
    train: TrainStep = Field(default_factory=TrainStep)
    evaluate: EvaluateStep = Field(default_factory=EvaluateStep)
    gate: GateStep = Field(default_factory=GateStep)
    deploy: DeployStep = Field(default_factory=DeployStep)
    notify: Notify = Field(default_factory=Notify)
    code_version: str = ""  # filled by the client: part of every step's cache key
    _origin: str = PrivateAttr("the pipeline")  # the file's name, or "flags"
    _node: object = PrivateAttr(None)  # the YAML's node tree, for line numbers

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if "ingest" in self.steps and not self.source:
            if "ingest" in self.model_fields_set or self.model_fields_set & {"steps"}:
                raise ValueError("the ingest step needs a source: a folder or s3://bucket/prefix")
            self.steps = [s for s in self.steps if s != "ingest"]
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("a step is listed twice")
        self.steps = [s for s in STEPS if s in self.steps]
        return self

    @property
    def model_name(self) -> str:
        return self.model or self.dataset

    @property
    def title(self) -> str:
        return self.name or self.model_name

    def to_json(self) -> str:
        return self.model_dump_json()

    def where(self, field: str) -> str:
        """`pipeline.yaml line 7: train.max_steps` (the line where the file sets `field`, dotted),
        for messages about a field that only the services can check."""
        line = _line_of(self._node, tuple(field.split("."))) if self._node is not None else None
        return f"{self._origin}{f' line {line}' if line else ''}: {field}"


def cache_key(step: str, inputs: dict) -> str:
    """The cache key of one step: sha256 (hex) of the step's name and its `inputs` (JSON-able:
    dataset sha256, options, parent version, code version), independent of dict order."""
    text = json.dumps({"step": step, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_force(step: str | None) -> None:
    """`--force STEP`: raise Img2ImgError unless `step` is None or one of STEPS."""
    if step is not None and step not in STEPS:
        raise Img2ImgError(f"--force must name a step: {', '.join(STEPS)}; got {step!r}")


def _line_of(node, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at `loc` (keys, then list indexes), or of the deepest
    parent found."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                return line
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "literal_error" and err["loc"][:1] == ("steps",):
        return f"unknown step {err['input']!r}; steps are {', '.join(STEPS)}"
    return msg


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "the file"


def parse(data: dict, where: str = "the pipeline", node=None) -> PipelineSpec:
    """A dict (the YAML's, or built from flags) -> PipelineSpec. Raises Img2ImgError: one line
    naming `where`, the line in the file (when `node`, the YAML's node tree, is given) and the
    field of the first mistake."""
    if not isinstance(data, dict):
        raise Img2ImgError(f"{where}: expected a mapping of fields (dataset:, train:, ...), got "
                           f"{type(data).__name__}")
    try:
        spec = PipelineSpec.model_validate(data)
        spec._origin, spec._node = where, node
        return spec
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        line = _line_of(node, loc) if node is not None else None
        at = f" line {line}" if line else ""
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise Img2ImgError(f"{where}{at}: {_field(loc)}: {_message(err)}{more}") from None


def load(path: str | Path) -> PipelineSpec:
    """Read and check `pipeline.yaml`. Raises Img2ImgError for a missing file, bad YAML (its
    line) or a bad field (its line and name)."""
    p = Path(path)
    if not p.is_file():
        raise Img2ImgError(f"no pipeline file {str(p)!r}")
    text = p.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise Img2ImgError(f"{p.name}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return parse(data if data is not None else {}, p.name, node)
