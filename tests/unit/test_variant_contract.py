"""The variant contract: one name per variant, a common config base, the CLI's torch-free catalog."""

import dataclasses
import subprocess
import sys

import pytest

from translator.catalog import CATALOG, DEFAULT_VARIANT, variant_names
from translator.config import ConfigError, TrainConfig, make_config
from translator.variants import VARIANTS


def test_catalog_is_the_registry():
    assert list(CATALOG) == list(VARIANTS)
    assert {n: info.paired for n, info in CATALOG.items()} == {n: cls.paired for n, cls in VARIANTS.items()}
    assert all(cls.name == name for name, cls in VARIANTS.items())
    assert DEFAULT_VARIANT in VARIANTS
    assert variant_names(paired=False) == ["cyclegan", "dualgan"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_config_has_the_training_fields(name):
    cfg_cls = VARIANTS[name].Config
    assert issubclass(cfg_cls, TrainConfig)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    assert {"lr", "beta1", "lr_policy", "decay_start", "batch_size", "image_size"} <= fields
    make_config(cfg_cls)  # the defaults are valid


@pytest.mark.parametrize("bad", [{"lr_policy": "step"}, {"decay_start": "1.5"}, {"batch_size": "0"},
                                 {"lr": "-1"}])
def test_training_fields_are_validated_for_every_variant(bad):
    for cls in VARIANTS.values():
        with pytest.raises((ConfigError, ValueError)):
            make_config(cls.Config, bad)


def test_cli_help_lists_the_registry_without_importing_torch():
    code = ("import sys, img2img_cli.commands.train, img2img_cli.commands.demo; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("what, modules", [
    # `jobs ls | status | logs | stop`: about 2 s instead of 4 on 2 cores without torch (it came
    # through registry.tracking and jobs.training.client)
    ("the job commands", "jobs.manage, jobs.training.progress, cluster.services, img2img_cli.commands.jobs"),
    # every job's Ray Data tasks (decode and crop, ingest) start in fresh worker processes: torch
    # there cost each training job's first batch 2-4 s (benchmarks/RESULTS.md)
    ("the data pipeline's tasks", "jobs.data.stream, jobs.data.decode, jobs.data.worker"),
])
def test_what_needs_no_model_loads_without_torch(what, modules):
    code = (f"import sys, {modules}; "
            "print(sorted(m for m in ('torch', 'jobs.training.driver') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", what


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_declares_its_smoke_config_and_its_descriptor(name):
    """The contract tests build each variant from its own `smoke` config; its descriptor says
    what its generator does, and the generator does it."""
    import torch

    from translator.descriptor import GeneratorDescriptor
    from translator.variants import Smoke, build_variant

    cls = VARIANTS[name]
    assert isinstance(cls.smoke, Smoke) and cls.smoke.fit_loss
    v = build_variant(name, cls.smoke.config)
    v.eval()
    d = v.descriptor
    assert GeneratorDescriptor.from_dict(d.to_dict()) == d == GeneratorDescriptor.from_json(d.to_json())
    assert d.two_way == (not cls.paired) and d.size_multiple == v.multiple
    side = 2 * max(d.size_multiple, 16)
    x = torch.rand(1, d.in_channels, side, side) * 2 - 1
    assert v.translate(x).shape == (1, d.out_channels, side * d.scale, side * d.scale)
