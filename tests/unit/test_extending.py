"""The recipes of docs/architecture.md, "Extending", run as written: a sixth same-size variant
(added from a temporary package through the public registration, then put through the same
contract tests as the built-in five), a new degradation and a new loss for every paired variant."""

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit import test_variant_contract as contract
from tests.unit import test_variants as variant_tests
from translator import degrade, losses, tasks
from translator.catalog import CATALOG, VariantInfo, register, unregister, variant_names
from translator.variants import VARIANTS, build_variant, get_variant

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
EXTENDING = PAGE[PAGE.index("\n## Extending\n"):]


def block(first_line: str) -> str:
    """The ```python block of the Extending section that starts with `first_line`."""
    m = re.search(r"```python\n" + re.escape(first_line) + r"\n(.*?)```", EXTENDING, re.S)
    assert m, f"docs/architecture.md, Extending: no code block starting {first_line!r}"
    return m[1]


@pytest.fixture()
def dncnn(tmp_path, monkeypatch):
    """The recipe's variant file in a temporary package, registered under its catalog line."""
    package = tmp_path / "recipe_variants"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "dncnn.py").write_text(block("# translator/variants/dncnn.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = re.search(r'```python\n\s+"dncnn": VariantInfo(\(.*?\)),\n```', EXTENDING, re.S)[1]
    entry = VariantInfo(*ast.literal_eval(args))  # the catalog line as the page shows it
    register("dncnn", entry._replace(target=entry.target.replace("translator.variants.", "recipe_variants.")))
    yield "dncnn"
    unregister("dncnn")
    sys.modules.pop("recipe_variants.dncnn", None)
    sys.modules.pop("recipe_variants", None)


def test_a_registered_variant_passes_the_same_contract_as_the_built_in_ones(dncnn):
    assert list(VARIANTS)[-1] == dncnn and dncnn in variant_names(paired=True)
    assert {n: info.paired for n, info in CATALOG.items()} == {n: cls.paired for n, cls in VARIANTS.items()}
    contract.test_every_config_has_the_training_fields(dncnn)
    contract.test_every_variant_declares_its_smoke_config_and_its_descriptor(dncnn)
    for batch_size in (1, 2):
        variant_tests.test_generator_keeps_shape_and_range(dncnn, batch_size)
    variant_tests.test_one_training_step_updates_every_network(dncnn)
    for fast in (False, True):
        variant_tests.test_overfits_a_tiny_fixed_batch(dncnn, fast)
    variant_tests.test_state_dict_round_trip_gives_identical_outputs(dncnn)
    variant_tests.test_a_bf16_channels_last_checkpoint_loads_into_a_plain_fp32_variant(dncnn)
    # the recipe's own test file runs too
    ns: dict = {}
    exec(compile(block("# tests/unit/test_dncnn.py"), "test_dncnn.py", "exec"), ns)
    ns["test_the_papers_depth_and_width"]()
    assert get_variant(dncnn).dry_run(get_variant(dncnn).Config(), 64) is None


def test_registration_refuses_taken_names_and_bad_targets_and_checks_the_class(monkeypatch):
    with pytest.raises(ValueError, match="already registered"):
        register("nafnet", CATALOG["nafnet"])
    with pytest.raises(ValueError, match="module:ClassName"):
        register("broken", VariantInfo(True, "x", "translator.variants.nafnet.NAFNetVariant"))
    monkeypatch.setitem(CATALOG, "misnamed", VariantInfo(True, "x", "translator.variants.nafnet:NAFNetVariant"))
    with pytest.raises(TypeError, match="declares name='nafnet'"):
        get_variant("misnamed")
    with pytest.raises(ValueError, match="unknown variant 'vae'"):
        get_variant("vae")


def test_a_new_degradation_is_one_entry(monkeypatch):
    monkeypatch.setattr(degrade, "DEGRADATIONS", dict(degrade.DEGRADATIONS))
    exec(compile(block("# translator/degrade.py"), "degrade.py", "exec"), vars(degrade).copy())
    assert "pixelate:N (whole number 2-64)" in degrade.rules()
    image = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)
    out = degrade.apply("pixelate:8", image, seed=1)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.array_equal(out[:8, :8], np.broadcast_to(out[0, 0], (8, 8, 3)))  # one colour per block
    assert np.array_equal(degrade.apply("mix(pixelate:8,gaussian:1.5)", image, 3),
                          degrade.apply("mix(pixelate:8,gaussian:1.5)", image, 3))
    assert tasks.task_for_spec("pixelate:4") == "restore"
    for bad in ("pixelate:1", "pixelate:65", "pixelate:2.5", "pixelate"):
        with pytest.raises(degrade.DegradationError, match=re.escape(f"degradation {bad!r}")):
            degrade.parse(bad)
    with pytest.raises(degrade.DegradationError, match="pixelate:N"):
        degrade.parse("mosaic:4")  # the unknown-spec error lists the new rule


def test_a_new_loss_is_one_entry_usable_by_every_paired_variant(monkeypatch):
    monkeypatch.setattr(losses, "PIXEL_LOSSES", dict(losses.PIXEL_LOSSES))
    exec(compile(block("# translator/losses.py"), "losses.py", "exec"), vars(losses).copy())
    fn = losses.pixel_loss("log_cosh")
    p, t = torch.tensor([0.0, 0.5, -1.0]), torch.tensor([0.0, -0.5, 1.0])
    assert float(fn(p, t)) == pytest.approx(float(np.mean(np.log(np.cosh([0.0, 1.0, -2.0])))))
    seen: list[float] = []

    def spy(pred, target):
        value = fn(pred, target)
        seen.append(float(value.detach()))
        return value

    monkeypatch.setitem(losses.PIXEL_LOSSES, "log_cosh", losses.PixelLoss(spy, "spy"))
    paired = variant_names(paired=True)
    assert {"nafnet", "autoencoder", "pix2pix"} <= set(paired)
    for name in paired:
        seen.clear()
        torch.manual_seed(0)
        v = build_variant(name, {**VARIANTS[name].smoke.config, "loss": "log_cosh"})
        logs = v.training_step(variant_tests.batch_for(v))
        assert seen, f"{name} did not compute its loss through the table"
        assert any(value == pytest.approx(seen[-1]) for value in logs.values()), (name, logs, seen)
        with pytest.raises(ValueError, match="loss must be one of l1, l2, mse, charbonnier, psnr, l1_fft"):
            build_variant(name, {"loss": "hinge"})


@pytest.mark.parametrize("name", ["l1", "l2", "mse", "charbonnier", "psnr", "l1_fft"])
def test_every_table_loss_is_zero_or_least_at_the_target_and_grows_with_the_error(name):
    fn = losses.pixel_loss(name)
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(target)
    values = [float(fn(target + s * noise, target)) for s in (0.0, 0.05, 0.2)]
    assert values[0] < values[1] < values[2]


def test_each_paired_variant_keeps_its_default_loss():
    assert {n: get_variant(n).Config().loss for n in ("nafnet", "autoencoder", "pix2pix")} == \
        {"nafnet": "l1", "autoencoder": "l2", "pix2pix": "l1"}
