"""The variant table: the ONE list of variants, torch-free so the CLI can read it without
importing torch (2 s of every command's start on a small CPU).

Each entry names a variant, its data kind, its one-line use and where its class lives
(`module:Class`, a module of this repository or of a package the caller installed). The registry
`translator.variants.VARIANTS` is derived from this table: a name a user types only selects an
entry here, so no module is ever loaded from a string a user wrote. Adding a variant: its file
and one line below (docs/architecture.md, "Extending").
"""

from __future__ import annotations

from typing import NamedTuple


class VariantInfo(NamedTuple):
    """One variant. paired: trains on `{"input","target"}` pairs (True) or unpaired `{"a","b"}`
    batches (False); use: one line for `--help`; target: `package.module:ClassName` of the
    `translator.variants.base.Variant` subclass."""

    paired: bool
    use: str
    target: str


CATALOG: dict[str, VariantInfo] = {
    "nafnet": VariantInfo(True, "photo restoration: deblurring, denoising (NAFNet, ECCV 2022)",
                          "translator.variants.nafnet:NAFNetVariant"),
    "autoencoder": VariantInfo(True, "the original article's encoder-decoder, L2 (a baseline)",
                               "translator.variants.autoencoder:Autoencoder"),
    "pix2pix": VariantInfo(True, "paired domain translation: sketches, maps, colourisation",
                           "translator.variants.pix2pix:Pix2Pix"),
    "srvgg": VariantInfo(True, "super-resolution 2x/3x/4x, --set scale=N (Real-ESRGAN's compact SRVGG net)",
                         "translator.variants.srvgg:SRVGG"),
    "cyclegan": VariantInfo(False, "unpaired domain translation, both directions",
                            "translator.variants.cyclegan:CycleGAN"),
    "dualgan": VariantInfo(False, "unpaired translation with dual WGAN critics",
                           "translator.variants.dualgan:DualGAN"),
}
DEFAULT_VARIANT = "nafnet"


def variant_names(paired: bool | None = None) -> list[str]:
    """Variant names in table order; `paired=True/False` keeps only that data kind."""
    return [n for n, info in CATALOG.items() if paired is None or info.paired == paired]


def register(name: str, info: VariantInfo) -> None:
    """Add a variant to the table at run time (a plugin package, a notebook, a test): after this
    `translator.variants.get_variant(name)` imports `info.target` and checks it. Raises ValueError
    for a name already taken or a target not written `module:Class`."""
    if name in CATALOG:
        raise ValueError(f"variant {name!r} is already registered")
    module, sep, cls = info.target.partition(":")
    if not sep or not module or not cls.isidentifier():
        raise ValueError(f"variant target must be 'package.module:ClassName', got {info.target!r}")
    CATALOG[name] = info


def unregister(name: str) -> None:
    """Remove a variant added by `register` (tests clean up with it); unknown names are ignored."""
    CATALOG.pop(name, None)
