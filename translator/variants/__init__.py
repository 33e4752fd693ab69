"""The variant registry: name -> class. Adding a variant = one file + one line here."""

from __future__ import annotations

from translator.variants.autoencoder import Autoencoder
from translator.variants.base import Variant, unwrap
from translator.variants.cyclegan import CycleGAN
from translator.variants.dualgan import DualGAN
from translator.variants.nafnet import NAFNetVariant
from translator.variants.pix2pix import Pix2Pix

VARIANTS: dict[str, type[Variant]] = {
    "nafnet": NAFNetVariant,
    "autoencoder": Autoencoder,
    "pix2pix": Pix2Pix,
    "cyclegan": CycleGAN,
    "dualgan": DualGAN,
}
DEFAULT_VARIANT = "nafnet"


def get_variant(name: str) -> type[Variant]:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None


def build_variant(name: str, config: dict | None = None, **kwargs) -> Variant:
    return get_variant(name).from_config(config, **kwargs)


__all__ = ["VARIANTS", "DEFAULT_VARIANT", "Variant", "get_variant", "build_variant", "unwrap"]
