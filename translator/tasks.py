"""Which translation task a degradation spec trains a model for (pure; no I/O).

A synthetic dataset's manifest records the spec its inputs were made with (`translator.degrade`);
the model trained on it learns to undo that spec, so the spec names the model's task:

    gaussian, random_gaussian, resize     -> deblur
    noise, jpeg, holes, scratches         -> restore   (with blur as well: still restore)
    gray                                  -> colorize  (with damage as well: colorize+restore)
    edges                                 -> sketch    (a line drawing keeps nothing else to restore)
    down (with anything else)             -> upscale   (super-resolution: the output is N times larger)

Each leaf's task is its `task` in `translator.degrade.DEGRADATIONS`; `task_for_spec(spec)` is
the one place leaves combine into a task; `GET /model`, the web page and
the demo all use it.
"""

from __future__ import annotations

from translator import degrade

TASKS = ("deblur", "colorize", "sketch", "restore", "upscale")


def _leaf_task() -> dict[type, str]:
    """Leaf degradation class -> the task that undoes it, from `translator.degrade.DEGRADATIONS`."""
    return {entry.cls: entry.task for entry in degrade.DEGRADATIONS.values()}


def _leaves(node) -> list:
    if isinstance(node, degrade.Mix):
        return [leaf for option in node.options for leaf in _leaves(option)]
    if isinstance(node, degrade.Chain):
        return [leaf for step in node.steps for leaf in _leaves(step)]
    return [node]


def task_for_spec(spec: str | None) -> str | None:
    """The task a model trained on pairs degraded by `spec` performs.

    Args:
        spec: a `translator.degrade` spec string as recorded in a dataset manifest
            (e.g. ``"mix(gaussian:1.5,resize:4)"``), or None/"" for datasets that were not
            synthesised (aligned or unaligned pairs the user brought).
    Returns:
        ``"deblur"``, ``"colorize"``, ``"sketch"``, ``"restore"``, ``"upscale"`` (any spec with
        ``down:N``: the model's output is N times larger than its input), or ``"colorize+restore"`` for grey
        damaged inputs; None when `spec` is None or empty; the raw `spec` itself when it does
        not parse (a spec from a newer version, say), so callers can still show something true.
        Never raises.
    """
    if spec is None or not str(spec).strip():
        return None
    try:
        leaves = _leaves(degrade.parse(str(spec)))
    except degrade.DegradationError:
        return str(spec)
    leaf_task = _leaf_task()
    found = {leaf_task.get(type(leaf)) for leaf in leaves}
    if None in found:  # a leaf class this table does not know yet
        return str(spec)
    if "sketch" in found:
        return "sketch"
    if "upscale" in found:  # blur, noise or JPEG around a shrink: blind super-resolution
        return "upscale"
    if "restore" in found:
        found.discard("deblur")  # blur among other damage: restoration is the broader name
    return "+".join(t for t in ("colorize", "restore", "deblur") if t in found)
