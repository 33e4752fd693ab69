"""A training request as plain, JSON-serialisable data: what the CLI submits and the job reads."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_name

from cluster.errors import Img2ImgError
from jobs.training.plan import check_options
from translator.config import ConfigError, make_config
from translator.variants import DEFAULT_VARIANT, get_variant


def check_model_name(name: str, what: str = "--model-name") -> None:
    """Raise Img2ImgError when MLflow's registry would refuse `name` (its own rule: not empty, no
    '/' or ':', no path tricks), so a job never trains to fail at registration."""
    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise Img2ImgError(f"{what} {name!r} cannot name a registered model: {e.message}") from None


def _same_number(text, value: float) -> bool:
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return False


@dataclass
class TrainSpec:
    dataset: str
    variant: str = DEFAULT_VARIANT
    config: dict = field(default_factory=dict)  # variant hyper-parameter overrides (--set)
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int | None = None  # None: not given (`jobs.training.plan.limits_for`: 10 only when no other limit is)
    max_steps: int | None = None
    time_budget_s: float | None = None  # seconds of training (from the workers' start); stops at the next step
    batch_size: int | None = None  # per worker; default from the variant config
    image_size: int | None = None  # training crop; default from the variant config
    lr: float | None = None
    experiment: str = "img2img"
    model_name: str | None = None  # registered model; default: the dataset name
    resume: str | None = None  # MLflow run id whose last checkpoint to continue from
    keep_checkpoints: int = 2
    max_failures: int = 2
    spread: bool = False  # --spread: workers on as many nodes as possible (Ray's SPREAD placement)
    # admission resources each worker reserves in its placement group (a job bigger than one node:
    # cluster.admission.worker_reservation); set at submission, {}: the entrypoint reserved them
    worker_resources: dict = field(default_factory=dict)
    stall_timeout_s: float | None = 1800.0  # --stall-timeout: end the run after this long without a step; 0: never
    log_every: int = 10
    checkpoint_every: str = "auto"  # validate + checkpoint cadence: steps ("200"), "5m", "30s", "epoch", "auto"
    seed: int = 0
    precision: str = "auto"  # auto: bf16 + channels_last on CUDA and on CPUs with native bf16, else fp32; fp32; bf16
    init_from: str | None = None  # --init-from: a registered model (NAME@alias | NAME/VERSION) to start from
    init_path: str | None = None  # its checkpoint in the store (resolved before submission)
    parent: str | None = None  # NAME/VERSION of that model (lineage)
    run_id: str | None = None  # the MLflow run, created at submission
    fail_at_step: int | None = None  # test hook: rank 0 raises once at this step

    def validate(self) -> None:
        """Raise Img2ImgError (one line, naming the option) for a request that cannot train:
        config values the variant refuses or cannot build its networks with (tried on PyTorch's
        meta device: no memory, milliseconds; a layer without weights counts as not built),
        non-finite numbers, a name MLflow cannot register."""
        check_options(workers=self.workers, cpus_per_worker=self.cpus_per_worker, epochs=self.epochs,
                      max_steps=self.max_steps, time_budget_s=self.time_budget_s, precision=self.precision,
                      checkpoint_every=self.checkpoint_every, stall_timeout_s=self.stall_timeout_s)
        try:
            cfg = self.variant_config()
        except ValueError as e:
            raise Img2ImgError(str(e)) from None
        try:
            with warnings.catch_warnings():  # e.g. "zero-element tensors" before the real error
                warnings.simplefilter("ignore")
                variant = get_variant(self.variant).on_meta(cfg)
        except Exception as e:  # e.g. --set width=0: "groups must be a positive integer"
            first = (str(e).strip().splitlines() or [""])[0]
            raise Img2ImgError(f"{self.variant} cannot be built with these settings ({type(e).__name__}: {first}); "
                               f"check the --set values") from None
        # A zero width (e.g. --set nf=0) builds layers without weights, which only fail at the first step.
        empty = next((f"{net}.{name}" for net, m in variant.networks().items()
                      for name, p in m.named_parameters() if p.numel() == 0), None)
        if empty:
            raise Img2ImgError(f"{self.variant} cannot be built with these settings ({empty} would have no "
                               f"weights: a width of 0?); check the --set values")
        check_model_name(self.registered_name, "--model-name" if self.model_name else "the dataset name")

    def variant_config(self):
        """The variant's Config: its defaults, then `--set` values, then `--lr`, `--batch-size`,
        `--image-size`. Raises ValueError (ConfigError) for a value the Config refuses, and for
        a setting given twice with different values (`--set image_size=64 --image-size 128`):
        one of them would be ignored without a word."""
        overrides = dict(self.config)
        for key in ("lr", "batch_size", "image_size"):
            value = getattr(self, key)
            if value is None:
                continue
            if key in overrides and not _same_number(overrides[key], value):
                raise ConfigError(f"--set {key}={overrides[key]} and --{key.replace('_', '-')} {value:g} disagree; "
                                  "give one of them")
            overrides[key] = value
        return make_config(get_variant(self.variant).Config, overrides)

    @property
    def registered_name(self) -> str:
        return self.model_name or self.dataset

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls(**json.loads(text))
