"""What every variant shares: device/AMP handling, LR schedules, optimiser steps, state dicts.

A variant subclass declares its `Config`, builds its networks and optimisers, and writes
`train_step(batch)` (its own G/D updates). Everything else lives here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from translator.config import make_config
from translator.descriptor import DIRECTIONS, GeneratorDescriptor
from translator.precision import strict_fp32


@dataclasses.dataclass(frozen=True)
class Smoke:
    """A variant's smoke test, declared beside it so the contract tests walk the registry:
    `config`: overrides giving tiny widths (every contract test builds the variant with them and
    trains on 32 x 32 crops in seconds on a CPU); `fit_loss`: the key of `train_step`'s result that
    measures reconstruction and must halve when the variant overfits one fixed batch; `fit`: further
    overrides for that overfitting test only (no dropout, a faster learning rate)."""

    config: dict
    fit_loss: str = "loss"
    fit: dict = dataclasses.field(default_factory=dict)


def ema_average(decay: float):
    """`AveragedModel`'s multi_avg_fn for an exponential moving average with warm-up: after n
    updates the EMA moves toward the live weights by 1 - min(decay, (1 + n) / (10 + n)), so early
    averages are not dominated by the random initialisation (the TensorFlow/timm EMA rule)."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)
    return update


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP/compile wrapper."""
    while hasattr(module, "module"):
        module = module.module
    return module


def lr_factor(policy: str, step: int, total: int | None, decay_start: float, elapsed: float = 0.0) -> float:
    """Multiplier on the base LR, in [0, 1]: `constant`, `linear` (constant, then linear to zero
    from `decay_start` of the run: the pix2pix/CycleGAN schedule) or `cosine` (NAFNet). The run's
    progress is the larger of step / total and `elapsed`, the share of a time budget used (0-1),
    so a run that its time budget ends still anneals to zero by its end."""
    if policy == "constant" or (not total and not elapsed):
        return 1.0
    progress = min(max(step / total if total else 0.0, elapsed), 1.0)
    if policy == "linear":
        if progress <= decay_start:
            return 1.0
        return max(0.0, 1.0 - (progress - decay_start) / (1.0 - decay_start))
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_policy {policy!r}")


def _placed(net: nn.Module, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    """`net` on `device` in `memory_format`. A (1, C, 1, 1) parameter (NAFNet's beta and gamma) is
    the same memory in either layout, but channels_last gives it strides (C, 1, C, C) that its
    gradients never have; torch's DistributedDataParallel then warns in every job's log ("Grad
    strides do not match bucket view strides ... may impair performance") and copies those
    gradients every step, so such parameters keep the plain strides."""
    net = net.to(device, memory_format=memory_format)
    if memory_format == torch.channels_last:
        for p in net.parameters():
            if p.dim() == 4 and p.shape[0] == 1 and p.shape[2] == p.shape[3] == 1:
                p.data = p.data.clone(memory_format=torch.contiguous_format)
    return net


class Variant:
    """The contract between a translator variant and everything that trains or serves it.

    A variant is one file (see `autoencoder.py`, the smallest) that declares:

    - `name`: its registry key (`translator.variants.VARIANTS`), also the `variant` tag in MLflow;
    - `paired`: True -> batches are `{"input": x, "target": y}` (x degraded, y clean);
      False -> unpaired batches `{"a": x, "b": y}` from the two domains. Every tensor is float32
      NCHW, shape (batch_size, 3, image_size, image_size), values in [-1, 1];
    - `Config`: a dataclass subclassing `translator.config.TrainConfig` (which brings `lr`, `beta1`,
      `lr_policy`, `decay_start`, `batch_size`, `image_size`); `validate()` raises ValueError;
    - `build_networks() -> {key: nn.Module}`: every network; the job DDP-wraps each one;
    - `build_optimizers() -> {key: Optimizer}` over those networks' parameters;
    - `train_step(batch) -> {loss_name: 0-dim tensor}`: ALL its updates for one step (e.g. D then
      G), each through `self.optimize(opt_key, loss)`; a network used only as a fixed critic is
      called through `self.frozen(key)` (DDP would wait for gradients that never come);
    - `generator_key` (default "G"): the inference network, A->B; unpaired variants also set
      `reverse_key`, the B->A generator. A generator maps (N, 3, H, W) in [-1, 1] to the same shape
      and range; its optional attribute `multiple` says H and W must be multiples of it (tiled
      inference pads for you);
    - `smoke`: a `Smoke` (tiny config, the loss that must fall): the contract tests run it.

    What the trained generator is (size multiple, scale, directions, channels, bf16-safe) is its
    `descriptor`, derived from the above and the class attributes `scale`, `in_channels`,
    `out_channels` and `bf16_safe` (defaults: 1, 3, 3, True); the training job records it.

    The base class gives the rest once: device and AMP, the LR schedule (`set_total_steps`),
    `training_step` (moves the batch, autocasts, counts steps, returns floats), `translate`,
    and `state_dict()/load_state_dict()` (networks, optimisers, scaler, step) for checkpoints.
    Source of the pattern: junyanz/pytorch-CycleGAN-and-pix2pix `BaseModel`.
    """

    name: ClassVar[str] = ""
    paired: ClassVar[bool] = True  # paired batches {"input","target"}; unpaired {"a","b"}
    Config: ClassVar[type]
    generator_key: ClassVar[str] = "G"
    reverse_key: ClassVar[str | None] = None  # unpaired: the B->A generator
    smoke: ClassVar[Smoke | None] = None
    scale: int = 1  # output size / input size (a super-resolution variant sets it per instance)
    in_channels: ClassVar[int] = 3
    out_channels: ClassVar[int] = 3
    bf16_safe: ClassVar[bool] = True

    def __init__(self, config, device: str | torch.device = "cpu", amp: str | None = None,
                 channels_last: bool = False):
        """amp: None (fp32), "bf16" (CUDA, or a CPU with native bf16: the caller checks
        `translator.precision.cpu_has_native_bf16`, emulated bf16 is slower) or "fp16" (CUDA only;
        ignored on a CPU). channels_last: networks and batches in NHWC memory order (NAFNet's
        LayerNorm2d permutes to NHWC, which this makes free; with bf16 it is the fast CPU path)."""
        self.config = config
        self.device = torch.device(device)
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be bf16, fp16 or None, got {amp!r}")
        self.amp = amp if self.device.type == "cuda" or amp == "bf16" else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.nets: dict[str, nn.Module] = {k: _placed(v, self.device, self.memory_format)
                                           for k, v in self.build_networks().items()}
        self.opts: dict[str, torch.optim.Optimizer] = self.build_optimizers()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.step = 0
        self.total_steps: int | None = None
        self.budget_used = 0.0  # the share (0-1) of the run's time budget used: see `set_budget_used`
        # config.ema_decay > 0: a Polyak average of the generator's weights, updated after every
        # step; it is the inference network (validation, registration, serving), never trained.
        decay = float(getattr(config, "ema_decay", 0.0) or 0.0)
        self.ema: AveragedModel | None = None
        if decay:
            self.ema = AveragedModel(self.nets[self.generator_key], multi_avg_fn=ema_average(decay)).eval()
            self.ema.requires_grad_(False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any = None, **kwargs) -> Variant:
        """Build from a `Config`, a dict of overrides (strings are coerced) or None (defaults).
        Raises `ConfigError`/ValueError for unknown keys or invalid values."""
        if config is None or isinstance(config, dict):
            config = make_config(cls.Config, config)
        return cls(config, **kwargs)

    @classmethod
    def on_meta(cls, config: Any = None) -> Variant:
        """The variant with every network on PyTorch's meta device: shapes only, no memory and
        no initialisation cost (for checks such as `dry_run` and architecture comparisons)."""
        if config is None or isinstance(config, dict):
            config = make_config(cls.Config, config)
        with torch.device("meta"):
            return cls(config, device="meta")

    @classmethod
    def dry_run(cls, config: Any, size: int) -> str | None:
        """Why one training step on (config.batch_size, 3, size, size) crops would fail, or None
        when it runs. `train_step` runs on the meta device (shapes only, milliseconds, optimiser
        updates skipped), so every network's size rule (a U-Net's multiple of 2**depth, a
        PatchGAN's minimum, an encoder-decoder's multiple of 16, a norm layer's "more than one
        value") is met exactly as training would meet it. -> "ExcType: first line" or None."""
        variant = cls.on_meta(config)
        variant.optimize = lambda opt_name, loss: None  # shapes are all we check
        x = torch.zeros(variant.config.batch_size, cls.in_channels, size, size, device="meta")
        n = variant.scale  # an instance's own (a super-resolution variant's config sets it)
        y = torch.zeros(variant.config.batch_size, cls.out_channels, size * n, size * n, device="meta")
        batch = {"input": x, "target": y} if cls.paired else {"a": x, "b": y}
        try:
            with warnings.catch_warnings():  # e.g. "target size differs" before the real error
                warnings.simplefilter("ignore")
                variant.train()
                variant.train_step(batch)
        except Exception as e:  # any failure is the answer, whatever its type
            return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        return None

    def build_networks(self) -> dict[str, nn.Module]:
        """Every network of the variant, by key (built on CPU; moved to the device for you)."""
        raise NotImplementedError

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per update (e.g. "G", "D") over `self.nets`' parameters, at `config.lr`."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All updates of one step on a batch already on the device -> detached 0-dim losses."""
        raise NotImplementedError

    # ---- the interface jobs use -------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    def wrap_networks(self, wrap) -> None:
        """Replace each network by `wrap(net)` (e.g. DDP); optimisers keep the same params."""
        self.nets = {k: wrap(v) for k, v in self.nets.items()}

    @property
    def generator(self) -> nn.Module:
        """The A->B inference network: the EMA of the weights when `ema_decay` is on, else the
        trained network itself (train_step uses `self.nets`, never this)."""
        if self.ema is not None:
            return self.ema.module
        return unwrap(self.nets[self.generator_key])

    @property
    def reverse_generator(self) -> nn.Module | None:
        return unwrap(self.nets[self.reverse_key]) if self.reverse_key else None

    @property
    def descriptor(self) -> GeneratorDescriptor:
        """What the inference generator is (`translator.descriptor`): its network's `multiple`
        attribute (1 when it has none), the class's scale, channels and bf16 safety, and both
        directions when the variant has a reverse generator."""
        return GeneratorDescriptor(size_multiple=int(getattr(self.generator, "multiple", 1)), scale=self.scale,
                                   directions=DIRECTIONS if self.reverse_key else DIRECTIONS[:1],
                                   in_channels=self.in_channels, out_channels=self.out_channels,
                                   bf16_safe=self.bf16_safe)

    @property
    def multiple(self) -> int:
        """Input height/width must be a multiple of this (tiling pads for you)."""
        return self.descriptor.size_multiple

    @property
    def lr(self) -> float:
        """The first optimiser's learning rate now (what the LR policy has set)."""
        opt = next(iter(self.opts.values()), None)
        return float(opt.param_groups[0]["lr"]) if opt is not None else 0.0

    def set_total_steps(self, total: int | None) -> None:
        """Lets `linear`/`cosine` LR policies know where the run ends."""
        self.total_steps = total
        self._apply_lr()

    def set_budget_used(self, share: float) -> None:
        """Lets `linear`/`cosine` LR policies follow a time budget that ends the run before its step
        total: `share` of it is used (0-1; the same on every data-parallel worker, or their
        weights drift apart)."""
        self.budget_used = min(max(float(share), 0.0), 1.0)
        self._apply_lr()

    def _apply_lr(self) -> None:
        cfg = self.config
        factor = lr_factor(cfg.lr_policy, self.step, self.total_steps, getattr(cfg, "decay_start", 0.5),
                           self.budget_used)
        for opt in self.opts.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def train(self, mode: bool = True) -> None:
        for net in self.nets.values():
            net.train(mode)
        if self.ema is not None:
            self.ema.eval()  # only ever used for inference

    def eval(self) -> None:
        self.train(False)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def optimize(self, opt_name: str, loss: torch.Tensor) -> None:
        opt = self.opts[opt_name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()

    def frozen(self, name: str) -> nn.Module:
        """A network used only as a fixed critic in this update (e.g. D in the G step): called
        without its DDP wrapper, since no gradient of it is to be synchronised."""
        return unwrap(self.nets[name])

    def set_requires_grad(self, names: list[str], flag: bool) -> None:
        for name in names:
            for p in self.nets[name].parameters():
                p.requires_grad_(flag)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step (all of the variant's G/D updates) -> float losses."""
        self.train()
        batch = {k: v.to(self.device, non_blocking=True, memory_format=self.memory_format) for k, v in batch.items()}
        with self.autocast():
            logs = self.train_step(batch)
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.nets[self.generator_key]))
        self.step += 1
        self._apply_lr()
        return {k: float(v) for k, v in logs.items()}

    @torch.no_grad()
    def translate(self, x: torch.Tensor, reverse: bool = False, fp32: bool = False) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> the generator's (or, `reverse`, the B->A one's) float32 output.
        fp32=True: no autocast whatever `amp` is, no TF32 on CUDA (validation: its numbers stand for
        the registered model's, which `img2img eval` computes in strict fp32)."""
        net = self.reverse_generator if reverse else self.generator
        with strict_fp32(self.device.type) if fp32 else self.autocast():
            return net(x.to(self.device, memory_format=self.memory_format)).float().contiguous()

    # ---- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "nets": {k: unwrap(v).state_dict() for k, v in self.nets.items()},
            "opts": {k: v.state_dict() for k, v in self.opts.items()},
            "scaler": self.scaler.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Restore a `state_dict()`: weights, the optimisers' moments and the step; the optimisers'
        hyper-parameters (lr, betas, weight decay) stay the ones of this variant's config.
        with_optimizers=False (registration, `--init-from`) takes the weights only; a checkpoint's EMA then also becomes the generator's starting weights,
        since the EMA is what was validated and registered. Raises ValueError for another variant."""
        if state.get("variant", self.name) != self.name:
            raise ValueError(f"checkpoint is a {state['variant']!r}, not a {self.name!r}")
        for key, sd in state["nets"].items():
            unwrap(self.nets[key]).load_state_dict(sd)
        ema = state.get("ema")
        if ema is not None and not with_optimizers:
            averaged = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
            unwrap(self.nets[self.generator_key]).load_state_dict(averaged)
        if self.ema is not None:
            if ema is not None and with_optimizers:
                self.ema.load_state_dict(ema)
            else:  # start the average at the loaded weights
                self.ema.module.load_state_dict(unwrap(self.nets[self.generator_key]).state_dict())
                self.ema.n_averaged.fill_(1)
        if with_optimizers:
            for key, sd in state.get("opts", {}).items():
                # The checkpoint brings the moments; the hyper-parameters (lr, betas, weight decay)
                # stay this config's, so a resumed run (or a PBT clone) trains with the values asked for.
                mine = [{"initial_lr": g["lr"], **{k: v for k, v in g.items() if k != "params"}}
                        for g in self.opts[key].param_groups]
                self.opts[key].load_state_dict(sd)
                for group, hyper in zip(self.opts[key].param_groups, mine):
                    group.update(hyper)
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        self.step = int(state.get("step", 0))
        self._apply_lr()
