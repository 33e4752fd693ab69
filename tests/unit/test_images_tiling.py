"""Image conversion handles real-world files; tiled inference is exact and seamless."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from translator import images, tiling


def encoded(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_become_rgb_and_alpha_is_kept():
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 128))
    rgb, alpha = images.split_alpha(images.open_image(encoded(rgba)))
    assert rgb.mode == "RGB" and rgb.size == (5, 4) and alpha.getpixel((0, 0)) == 128
    for mode in ("L", "LA", "P", "CMYK", "1"):
        img = Image.new(mode, (3, 2))
        assert images.to_rgb(images.open_image(encoded(img, "TIFF" if mode == "CMYK" else "PNG"))).mode == "RGB"


def test_16bit_is_scaled_not_clipped():
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    img = images.open_image(encoded(Image.fromarray(arr)))
    assert img.mode.startswith("I")
    value = images.to_array(img)[0, 0, 0]
    assert value == pytest.approx(0.5, abs=0.01)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (6, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = images.to_rgb(images.open_image(encoded(img, "JPEG", exif=exif)))
    assert rotated.size == (3, 6)


def test_tensor_round_trip():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8))
    x = images.to_tensor(img)
    assert x.shape == (1, 3, 7, 9) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.asarray(images.to_pil(x)), np.asarray(img))


def small_fcn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (37, 53), (130, 70)])
def test_output_has_exactly_the_input_size(size):
    net = small_fcn()
    x = torch.rand(1, 3, *size)
    assert tiling.enhance(net, x, tile=64, overlap=8, multiple=4).shape == x.shape


def test_single_tile_equals_direct_forward():
    net = small_fcn()
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        direct = net(x)
    assert torch.allclose(tiling.enhance(net, x, tile=128, overlap=16, multiple=16), direct, atol=1e-5)


def test_no_seams_against_full_forward_on_512():
    net = small_fcn()
    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        full = net(x)
    tiled = tiling.enhance(net, x, tile=128, overlap=32, multiple=1, batch_size=8)
    assert tiling.count_tiles(512, 512, 128, 32) > 1
    diff = (tiled - full).abs()
    print(f"max abs difference tiled vs full: {diff.max():.2e}")
    assert diff.max() < 1e-4


def test_split_merge_identity():
    x = torch.rand(1, 3, 100, 77)
    tiles, plan = tiling.split(x, tile=32, overlap=8, multiple=8)
    assert torch.allclose(tiling.merge(tiles, plan), x, atol=1e-6)
