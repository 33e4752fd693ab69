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


def test_the_architecture_page_new_variant_example_trains():
    import re
    from pathlib import Path

    import torch

    page = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    code = re.search(r"```python\n# translator/variants/unet_l1.py\n(.*?)```", page, re.S)[1]
    ns: dict = {}
    exec(compile(code, "unet_l1.py", "exec"), ns)
    variant = ns["UnetL1"].from_config({"ngf": "8"})
    batch = {"input": torch.rand(2, 3, 64, 64) * 2 - 1, "target": torch.rand(2, 3, 64, 64) * 2 - 1}
    first = variant.training_step(batch)["loss"]
    for _ in range(20):
        last = variant.training_step(batch)["loss"]
    assert last < first
