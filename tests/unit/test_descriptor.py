"""The generator descriptor (what a registered generator is) and scale-aware tiled inference."""

import json

import pytest
import torch
from torch import nn

from translator import tiling
from translator.descriptor import DESCRIPTOR_TAG, GeneratorDescriptor


def test_descriptor_round_trips_through_a_plain_dict_and_json():
    d = GeneratorDescriptor(size_multiple=16, scale=4, directions=("AtoB", "BtoA"), in_channels=3,
                            out_channels=3, bf16_safe=False)
    plain = d.to_dict()
    assert plain == {"size_multiple": 16, "scale": 4, "directions": ["AtoB", "BtoA"], "in_channels": 3,
                     "out_channels": 3, "bf16_safe": False}
    assert json.loads(json.dumps(plain)) == plain  # JSON-ready as it is
    assert GeneratorDescriptor.from_dict(plain) == d
    assert GeneratorDescriptor.from_json(d.to_json()) == d
    assert d.two_way and d.output_size(10, 7) == (40, 28)
    # a key written by a newer version is ignored; a missing one takes its default
    assert GeneratorDescriptor.from_dict({"scale": 2, "colour_space": "srgb"}) == GeneratorDescriptor(scale=2)


@pytest.mark.parametrize("bad", [{"scale": 0}, {"scale": 1.5}, {"scale": "2"}, {"size_multiple": -4},
                                 {"in_channels": True}, {"directions": []}, {"directions": ["BtoA"]},
                                 {"directions": ["BtoA", "AtoB"]}, {"directions": ["AtoB", "AtoB"]},
                                 {"directions": ["AtoC"]}, {"bf16_safe": "yes"}])
def test_bad_descriptors_are_refused_naming_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        GeneratorDescriptor.from_dict(bad)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null"])
def test_a_malformed_descriptor_tag_is_refused(text):
    with pytest.raises(ValueError, match="descriptor"):
        GeneratorDescriptor.from_json(text) if text else GeneratorDescriptor.from_json(None)


class _TwoWay(nn.Module):
    multiple = 8

    def __init__(self):
        super().__init__()
        self.BtoA = nn.Identity()


def test_tags_give_the_recorded_descriptor_else_what_older_versions_recorded():
    recorded = GeneratorDescriptor(size_multiple=32, scale=2)
    assert GeneratorDescriptor.from_tags({DESCRIPTOR_TAG: recorded.to_json(), "multiple": "4"}) == recorded
    # versions registered without the tag: the `multiple` tag, else the network's attribute
    assert GeneratorDescriptor.from_tags({"multiple": "4"}, nn.Identity()) == GeneratorDescriptor(size_multiple=4)
    assert GeneratorDescriptor.from_tags({}, _TwoWay()) == GeneratorDescriptor(size_multiple=8,
                                                                               directions=("AtoB", "BtoA"))
    assert GeneratorDescriptor.from_tags({}) == GeneratorDescriptor()


def upscaler(scale: int) -> nn.Module:
    """A tiny super-resolution network (conv + PixelShuffle, ESPCN's layout, Shi et al. 2016):
    (N, 3, H, W) -> (N, 3, scale*H, scale*W)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
                         nn.PixelShuffle(scale)).eval()


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_tiled_equals_untiled_at_every_scale(scale):
    """Tiles cut in input pixels, blended in output pixels: no seams, the output is exactly
    scale x the input's size, as the whole image through the network at once."""
    net = upscaler(scale)
    x = torch.rand(1, 3, 150, 97)
    with torch.no_grad():
        full = net(x)
    tiled = tiling.enhance(net, x, tile=64, overlap=16, multiple=1, batch_size=4, scale=scale)
    assert tiling.count_tiles(150, 97, 64, 16) > 1
    assert tiled.shape == full.shape == (1, 3, 150 * scale, 97 * scale)
    diff = (tiled - full).abs()
    print(f"scale {scale}: max abs difference tiled vs full: {diff.max():.2e}")
    assert diff.max() < 1e-4


def test_scale_one_is_the_same_computation_as_before():
    net = upscaler(1)
    x = torch.rand(1, 3, 70, 130)
    assert torch.equal(tiling.enhance(net, x, tile=32, overlap=8, multiple=4),
                       tiling.enhance(net, x, tile=32, overlap=8, multiple=4, scale=1))


@pytest.mark.parametrize("scale", [0, -2, 1.5, True])
def test_bad_scales_are_refused(scale):
    with pytest.raises(ValueError, match="scale"):
        tiling.split(torch.rand(1, 3, 8, 8), tile=8, overlap=0, scale=scale)


def test_merge_refuses_tiles_of_the_wrong_scale():
    tiles, plan = tiling.split(torch.rand(1, 3, 40, 40), tile=16, overlap=4, scale=2)
    with pytest.raises(ValueError, match="scale 2"):
        tiling.merge(tiles, plan)  # not upscaled
