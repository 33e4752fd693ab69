"""The variant registry: name -> class. Adding a variant: one file, a line here and one in
`translator/catalog.py` (docs/architecture.md, "A new variant")."""

from __future__ import annotations

from translator.catalog import CATALOG, DEFAULT_VARIANT, variant_names
from translator.variants.autoencoder import Autoencoder
from translator.variants.base import Variant, unwrap
from translator.variants.cyclegan import CycleGAN
from translator.variants.dualgan import DualGAN
from translator.variants.nafnet import NAFNetVariant
from translator.variants.pix2pix import Pix2Pix

# Each class's `name` is its key: the one place a variant is named.
VARIANTS: dict[str, type[Variant]] = {cls.name: cls for cls in (NAFNetVariant, Autoencoder, Pix2Pix, CycleGAN, DualGAN)}


def get_variant(name: str) -> type[Variant]:
    """Registry look-up; raises ValueError naming the known variants."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None


def build_variant(name: str, config: dict | None = None, **kwargs) -> Variant:
    """`get_variant(name).from_config(config, **kwargs)`: a ready-to-train variant."""
    return get_variant(name).from_config(config, **kwargs)


__all__ = ["VARIANTS", "CATALOG", "DEFAULT_VARIANT", "variant_names", "Variant", "get_variant", "build_variant", "unwrap"]
