"""What a registered generator IS, as plain data: the `GeneratorDescriptor`.

The variant produces it (`translator.variants.base.Variant.descriptor`), the training job records
it once with the registered version (the model-version tag `descriptor`, a JSON object), and
tiling, evaluation, export and serving read it instead of guessing from attributes, tags or
variant names. Torch-free: the CLI and the registry code read it without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from translator.catalog import CATALOG

DESCRIPTOR_TAG = "descriptor"  # the model-version tag holding `GeneratorDescriptor.to_json()`
DIRECTIONS = ("AtoB", "BtoA")  # A->B: the generator; B->A: an unpaired variant's reverse generator


@dataclasses.dataclass(frozen=True)
class GeneratorDescriptor:
    """The inference contract of one generator.

    - `size_multiple`: input height and width must be multiples of it (pixels, >= 1; tiled
      inference pads for it), e.g. 16 for the autoencoder, 2**depth for a U-Net;
    - `scale`: output size / input size (a whole number >= 1): a (N, C, H, W) input gives
      (N, C_out, scale*H, scale*W). 1 for every same-size translator; 2 or 4 for super-resolution;
    - `directions`: the translations it offers: ("AtoB",) or ("AtoB", "BtoA"); "BtoA" needs an unpaired variant's reverse generator (logged beside the forward one);
    - `in_channels`, `out_channels`: channels of input and output tensors (3: RGB);
    - `bf16_safe`: True when running it under bf16 autocast keeps its output within one 8-bit
      level of fp32 on natural images (serving may then choose bf16 where it is faster).

    Tensors in and out are float32 NCHW in [-1, 1]. Construction checks every field and raises
    ValueError naming the field.
    """

    size_multiple: int = 1
    scale: int = 1
    directions: tuple[str, ...] = ("AtoB",)
    in_channels: int = 3
    out_channels: int = 3
    bf16_safe: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", tuple(self.directions))
        for name in ("size_multiple", "scale", "in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"generator descriptor: {name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.bf16_safe, bool):
            raise ValueError(f"generator descriptor: bf16_safe must be true or false, got {self.bf16_safe!r}")
        if self.directions not in (DIRECTIONS[:1], DIRECTIONS):
            raise ValueError(f"generator descriptor: directions must be 'AtoB' and optionally 'BtoA', in that "
                             f"order, got {list(self.directions)}")

    @property
    def two_way(self) -> bool:
        """True when it also translates B->A (an unpaired variant's pair of generators)."""
        return "BtoA" in self.directions

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the output for an input of (height, width) pixels."""
        return height * self.scale, width * self.scale

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (directions as a list)."""
        d = dataclasses.asdict(self)
        d["directions"] = list(self.directions)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorDescriptor:
        """Inverse of `to_dict`. Keys it does not know (written by a newer version) are ignored;
        missing keys take their defaults. Raises ValueError for a value of the wrong kind."""
        if not isinstance(data, Mapping):
            raise ValueError(f"generator descriptor must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        """`to_dict()` as compact JSON (the `descriptor` tag's value)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> GeneratorDescriptor:
        """Inverse of `to_json`; ValueError for text that is not a descriptor."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"generator descriptor is not JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], generator: Any = None) -> GeneratorDescriptor:
        """The descriptor of a registered version from its tags: the `descriptor` tag when it has
        one; else (a version registered without it) a same-size, 3-channel descriptor from its
        `multiple` tag (or the loaded `generator`'s `multiple` attribute), two-way when the
        loaded generator has a `BtoA` network or, with no generator given, when its `variant`
        tag names an unpaired variant. Raises ValueError for a malformed `descriptor` tag."""
        if tags.get(DESCRIPTOR_TAG):
            return cls.from_json(tags[DESCRIPTOR_TAG])
        multiple = int(tags.get("multiple") or getattr(generator, "multiple", 1) or 1)
        if generator is not None:
            two_way = hasattr(generator, "BtoA")
        else:
            info = CATALOG.get(tags.get("variant", ""))
            two_way = info is not None and not info.paired
        return cls(size_multiple=multiple, directions=DIRECTIONS if two_way else DIRECTIONS[:1])
