"""Export of every variant's generator to ONNX and TorchScript: dynamic batch/height/width and
parity with PyTorch, on trained (non-identity) weights."""

import onnx
import pytest
import torch

from tests.unit.test_variants import TINY, batch_for
from translator import export
from translator.metrics import baseline
from translator.variants import VARIANTS, build_variant


def trained_generator(name):
    """A few real training steps (moves batch-norm statistics too), then every parameter
    nudged, so the generator is far from its initial state (an untrained NAFNet is the identity)."""
    torch.manual_seed(0)
    v = build_variant(name, TINY[name])
    for step in range(3):
        v.training_step(batch_for(v, seed=step))
    with torch.no_grad():
        for p in v.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    v.eval()
    return v


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_matches_pytorch_on_odd_sizes(name, fmt, tmp_path):
    v = trained_generator(name)
    x = export._sample(1, 32, 32, 3, seed=5)
    s = v.descriptor.scale  # super-resolution: output s times the input's size, exported at that scale
    with torch.no_grad():  # not the identity (nor bicubic, for SR): parity means something
        assert (v.generator(x) - baseline(x, (32 * s, 32 * s))).abs().mean() > 0.05
    result = export.export(v.generator, fmt, tmp_path / f"g{export.SUFFIX[fmt]}", v.multiple,
                           metadata={"variant": name}, descriptor=v.descriptor)
    assert result.path.is_file()
    assert set(result.per_size) == {"1x64x64", "2x45x77", "1x97x130"}
    assert result.max_abs_diff <= export.TOLERANCE
    run = export.load_runner(result.path, fmt)
    y = run(export._sample(3, 33, 50, 3, seed=9))  # a batch and size not used when exporting
    assert y.shape == (3, 3, 33 * s, 50 * s)


def test_onnx_file_is_valid_with_dynamic_axes_and_metadata(tmp_path):
    v = trained_generator("nafnet")
    path = export.export(v.generator, "onnx", tmp_path / "n.onnx", v.multiple, metadata={"variant": "nafnet"}).path
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["multiple"] == str(v.multiple) and meta["variant"] == "nafnet"


def test_export_above_tolerance_is_refused_and_leaves_no_file(tmp_path):
    v = trained_generator("nafnet")
    target = tmp_path / "n.onnx"
    with pytest.raises(export.ExportError, match=r"differs from PyTorch by .* over the"):
        export.export(v.generator, "onnx", target, v.multiple, tolerance=0.0)
    assert not target.exists()


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(export.ExportError, match="unknown export format 'tflite'"):
        export.export(torch.nn.Identity(), "tflite", tmp_path / "x")


def test_cli_refuses_an_unknown_format_in_one_line(cli, tmp_path):
    r = cli("models", "export", "photos@champion", "--format", "tflite", "-o", tmp_path / "x")
    assert r.exit_code == 1
    assert "Error: --format must be onnx or torchscript, got 'tflite'" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_a_4x_super_resolution_network_exports_with_parity_at_its_scale(fmt, tmp_path):
    """srvgg at scale 4 (the smoke config is 2x): the exported file returns 4x the input's size
    for sizes it was not exported at, within export.TOLERANCE of PyTorch."""
    torch.manual_seed(0)
    v = build_variant("srvgg", {**TINY["srvgg"], "scale": 4})
    with torch.no_grad():
        for p in v.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    v.eval()
    assert v.descriptor.scale == 4
    result = export.export(v.generator, fmt, tmp_path / f"g{export.SUFFIX[fmt]}", v.multiple,
                           metadata={"variant": "srvgg"}, descriptor=v.descriptor)
    assert result.max_abs_diff <= export.TOLERANCE
    x = export._sample(2, 19, 27, 3, seed=4)
    y = export.load_runner(result.path, fmt)(x)
    assert y.shape == (2, 3, 76, 108)
    with torch.no_grad():
        assert (y - v.generator(x)).abs().max() <= export.TOLERANCE
