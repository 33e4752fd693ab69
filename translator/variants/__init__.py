"""The variant registry: name -> class, derived from the one table in `translator/catalog.py`.

A variant is its own file (a `Variant` subclass that also declares its `smoke` config for the
contract tests) plus one line in `CATALOG`; `VARIANTS` reads the table, so nothing else lists
the variants (docs/architecture.md, "Extending")."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from translator.catalog import (
    CATALOG,
    DEFAULT_VARIANT,
    VariantInfo,
    register,
    unregister,
    variant_names,
)
from translator.descriptor import GeneratorDescriptor
from translator.variants.base import Smoke, Variant, unwrap


class _Registry(Mapping):
    """`CATALOG` seen as name -> `Variant` subclass. A class is imported from its entry's
    `module:Class` on first look-up and checked against the entry (its `name` and `paired`);
    entries added later with `translator.catalog.register` appear here at once."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], type[Variant]] = {}

    def __getitem__(self, name: str) -> type[Variant]:
        info = CATALOG[name]
        key = (name, info.target)
        if key not in self._loaded:
            module, _, attr = info.target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            if not (isinstance(cls, type) and issubclass(cls, Variant)):
                raise TypeError(f"variant {name!r}: {info.target} is not a translator Variant subclass")
            if cls.name != name or cls.paired != info.paired:
                raise TypeError(f"variant {name!r}: {info.target} declares name={cls.name!r}, "
                                f"paired={cls.paired}; the catalog says {name!r}, paired={info.paired}")
            self._loaded[key] = cls
        return self._loaded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(CATALOG))

    def __len__(self) -> int:
        return len(CATALOG)

    def __repr__(self) -> str:
        return f"VARIANTS({', '.join(CATALOG)})"


VARIANTS: Mapping[str, type[Variant]] = _Registry()


def get_variant(name: str) -> type[Variant]:
    """Registry look-up; raises ValueError naming the known variants."""
    if name not in CATALOG:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(CATALOG)}")
    return VARIANTS[name]


def build_variant(name: str, config: dict | None = None, **kwargs) -> Variant:
    """`get_variant(name).from_config(config, **kwargs)`: a ready-to-train variant."""
    return get_variant(name).from_config(config, **kwargs)


__all__ = ["VARIANTS", "CATALOG", "DEFAULT_VARIANT", "VariantInfo", "variant_names", "register", "unregister",
           "GeneratorDescriptor", "Smoke", "Variant", "get_variant", "build_variant", "unwrap"]
