"""`train --resume RUN`: the newest checkpoint an earlier run stored in the object store, and
what the request takes from it (the variant and the network's config; see `apply_resume`)."""

from __future__ import annotations

import json

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.training.finetune import adopt
from jobs.training.plan import TrainPlan
from jobs.training.spec import TrainSpec


def read_resume(spec: TrainSpec, settings: Settings) -> tuple[str, dict]:
    """The newest checkpoint of run `spec.resume` and its meta.json ({} if unreadable), after
    `apply_resume` has filled the spec from it. Raises Img2ImgError (see `apply_resume`)."""
    path = latest_checkpoint(settings, spec.resume)
    try:
        meta = json.loads(Storage(settings).get_bytes(path.split("/", 1)[1] + "/meta.json"))
    except Exception:
        meta = {}
    apply_resume(spec, meta)
    return path, meta


def apply_resume(spec: TrainSpec, meta: dict) -> None:
    """--resume continues a run with its networks and optimisers, so, as `--init-from` does, the
    checkpoint's variant and config (`meta`: its meta.json) fill what the request leaves unset
    (`spec.variant` "" and absent `--set` keys); settings that change no network (lr, batch
    size, crops, schedule) may differ. Raises Img2ImgError for another variant, a different
    architecture, or an unknown variant with none given."""
    run, had = spec.resume, meta.get("variant")
    if not had:
        if not spec.variant:
            raise Img2ImgError(f"run {run}'s checkpoint does not record its variant; pass --variant")
        return
    adopt(spec, had, meta.get("config") or {}, f"--resume {run}", "the checkpoint")


def check_resume(spec: TrainSpec, plan: TrainPlan, resume: tuple[str, dict] | None) -> str | None:
    """The checkpoint --resume continues from (refused now if already at the end)."""
    if resume is None:
        return None
    path, meta = resume
    step = int(meta.get("step", 0) or 0)
    if step >= plan.total_steps:
        raise Img2ImgError(f"run {spec.resume}'s last checkpoint is at step {step}, but this request stops at step "
                           f"{plan.total_steps}; raise --max-steps/--epochs above {step}")
    return path


def checkpoint_prefix(settings: Settings, run_id: str) -> str:
    return f"{settings.bucket}/checkpoints/{run_id}"


def latest_checkpoint(settings: Settings, run_id: str) -> str:
    """Path (`bucket/checkpoints/RUN/checkpoint_...`) of the newest checkpoint an earlier run
    stored (for --resume; the workers open it with the store's filesystem)."""
    storage = Storage(settings)
    dirs = sorted({o.key.split("/")[2] for o in storage.list(f"checkpoints/{run_id}/")
                   if o.key.split("/")[2].startswith("checkpoint_") and o.key.endswith("state.pt")})
    if not dirs:
        raise Img2ImgError(f"run {run_id!r} has no checkpoint to resume from (see `img2img jobs ls` for run ids "
                           "of finished jobs)")
    return f"{checkpoint_prefix(settings, run_id)}/{dirs[-1]}"
