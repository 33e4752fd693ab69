"""What the CLI may know of the variants without importing torch (2 s of every command's start on
a small CPU): each variant's name, data kind and one-line use. `translator.variants.VARIANTS` is the
real registry; a unit test keeps the two equal."""

from __future__ import annotations

from typing import NamedTuple


class VariantInfo(NamedTuple):
    paired: bool
    use: str


CATALOG: dict[str, VariantInfo] = {
    "nafnet": VariantInfo(True, "photo restoration: deblurring, denoising (NAFNet, ECCV 2022)"),
    "autoencoder": VariantInfo(True, "the original article's encoder-decoder, L2 (a baseline)"),
    "pix2pix": VariantInfo(True, "paired domain translation: sketches, maps, colourisation"),
    "cyclegan": VariantInfo(False, "unpaired domain translation, both directions"),
    "dualgan": VariantInfo(False, "unpaired translation with dual WGAN critics"),
}
DEFAULT_VARIANT = "nafnet"


def variant_names(paired: bool | None = None) -> list[str]:
    """Variant names in registry order; `paired=True/False` keeps only that data kind."""
    return [n for n, info in CATALOG.items() if paired is None or info.paired == paired]
