"""The translations `img2img demo --task` runs: what each synthesises from the sample photos,
which variant learns it, and how its report names the columns. Light (no torch): the CLI
checks `--task` with it before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import Img2ImgError


@dataclass(frozen=True)
class DemoTask:
    """One demo task.

    name: the `--task` value. spec / quick_spec: `translator.degrade` specs for the full demo and
    `--quick`. variant: the translator trained by default (`--variant` overrides). colour_only: ingest only the colour sample photos (grey
    ones have nothing to colourise). input_label / output_label: grid and report column names.
    recipe: `--set KEY=VALUE` pairs the task's own variant trains with (`train_config`).
    """

    name: str
    spec: str
    quick_spec: str
    variant: str
    input_label: str
    output_label: str
    colour_only: bool = False
    recipe: tuple[tuple[str, str], ...] = ()

    def dataset(self, quick: bool) -> str:
        """Dataset name; deblur keeps the original demo's names, the others get their own."""
        base = "demo-photos" if self.name == "deblur" else f"demo-{self.name}"
        return f"{base}-quick" if quick else base

    def train_config(self, variant: str) -> dict[str, str]:
        """The `--set` pairs the demo trains `variant` with: the task's recipe for its own variant;
        {} for another (it keeps its defaults: the recipe was measured for the task's variant)."""
        return dict(self.recipe) if variant == self.variant else {}


DEMO_TASKS = {
    # Blind deblurring: each photo blurred with its own Gaussian sigma in [1, 2.5]. The article's
    # mix of blur and 4x down-up resizing gained only ~1 dB on held-out photos in 5 minutes (the
    # resize half barely moves: benchmarks/RESULTS.md); --quick (2 minutes) learns sigma 1.5.
    # The recipe of the blind benchmark (benchmarks/quality.py --blind): L1 + FFT loss, colour jitter
    # 0.3 on the targets, each step's inputs drawn afresh with the dataset's own spec (degrade=auto).
    # Measured on the full demo: benchmarks/RESULTS.md, "The demo's recipe".
    "deblur": DemoTask("deblur", "random_gaussian:1-2.5", "gaussian:1.5", "nafnet", "blurred", "enhanced",
                       recipe=(("loss", "l1_fft"), ("color_jitter", "0.3"), ("degrade", "auto"))),
    "colorize": DemoTask("colorize", "gray", "gray", "pix2pix", "grey", "colourised",
                         colour_only=True),
    "sketch": DemoTask("sketch", "edges", "edges", "pix2pix", "sketch", "generated"),
    # Thin white strokes: nafnet's residual output fills them from their neighbours.
    "restore": DemoTask("restore", "scratches:12", "scratches:12", "nafnet", "damaged", "restored"),
    # 4x super-resolution: the input is a quarter of the photo's size; it is shown and scored as its
    # bicubic upscale (the baseline), so the report compares bicubic, the model and the original.
    "upscale": DemoTask("upscale", "down:4", "down:4", "srvgg", "bicubic", "upscaled"),
}
DEFAULT_TASK = "deblur"


def demo_task(name: str) -> DemoTask:
    """The task called `name`. Raises Img2ImgError (one line, the choices) for any other name."""
    try:
        return DEMO_TASKS[name]
    except KeyError:
        raise Img2ImgError(f"unknown task {name!r}; use one of: {', '.join(DEMO_TASKS)}") from None
