"""MLflow: the run of a training job, its metrics and images, and the model it registers."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


class RunLogger:
    """Logs into one existing MLflow run through the tracking server (artifacts are proxied by
    the server, so workers need no object-store keys for this)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, image: Image.Image, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(artifact_file).name
            image.save(path)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent))

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


# Tags the job keeps on its MLflow run: the source of truth for `train --follow`,
# `jobs status` and the demo's live display (no parsing of Ray's log text).
TAG_PHASE = "img2img.phase"  # planned | training | registering | done | failed | stopped
TAG_TOTAL_STEPS = "img2img.total_steps"
TAG_STEPS_PER_EPOCH = "img2img.steps_per_epoch"
TAG_STARTS = "img2img.worker_starts"  # 1 on the first start; each worker-group restart adds one
TAG_RESTORED = "img2img.restored_step"  # the step of the checkpoint the latest start restored
TAG_TIME_BUDGET = "img2img.time_budget_s"
TAG_TRAINING_SINCE = "img2img.training_since"  # epoch seconds when the workers first started training


def record_start(logger: RunLogger, restored_step: int | None) -> None:
    """Rank 0, at every (re)start of the worker group: count the start, note what was restored."""
    run = logger.client.get_run(logger.run_id)
    starts = int(run.data.tags.get(TAG_STARTS, "0")) + 1
    logger.client.set_tag(logger.run_id, TAG_STARTS, str(starts))
    if TAG_TRAINING_SINCE not in run.data.tags:
        logger.client.set_tag(logger.run_id, TAG_TRAINING_SINCE, f"{time.time():.1f}")
    logger.client.set_tag(logger.run_id, TAG_PHASE, "training")
    if restored_step is not None:
        logger.client.set_tag(logger.run_id, TAG_RESTORED, str(restored_step))
    elif starts > 1:
        logger.client.set_tag(logger.run_id, TAG_RESTORED, "none")


def model_signature():
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Any batch, any height/width (a multiple of the network's stride): float32 NCHW in [-1, 1].
    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def model_requirements() -> list[str]:
    """What the logged model needs, pinned to this job's versions. Given explicitly because
    mlflow's inference imports the model in a subprocess: seconds of every job on a small machine."""
    import numpy as np
    from mlflow.pytorch import get_default_pip_requirements

    # torch without its local `+cpu` label (no index serves it), and cloudpickle
    pinned = [r.split("+")[0] for r in get_default_pip_requirements()]
    return [*pinned, f"numpy=={np.__version__}"]


def log_generator(generator, multiple: int, variant: str, config: dict, registered_name: str | None,
                  reverse=None):
    """Log the generator as an MLflow pytorch model (pickled, so any input size works: mlflow 3's
    default pt2 export would fix H x W), with the translator code beside it.

    An unpaired variant passes its B->A generator as `reverse`: both are logged as one
    `TwoWayGenerator` (forward = A->B, as before), so the endpoint can serve either direction."""
    import mlflow.pytorch
    import numpy as np

    import translator
    from translator.nets.twoway import TwoWayGenerator

    size = max(multiple, 32)
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    generator = generator.cpu().eval()
    if reverse is not None:
        generator = TwoWayGenerator(generator, reverse.cpu().eval()).eval()
    info = mlflow.pytorch.log_model(
        generator, name="model", serialization_format="pickle", signature=model_signature(),
        input_example=example, code_paths=[str(Path(translator.__file__).parent)],
        pip_requirements=model_requirements(),
        registered_model_name=registered_name, await_registration_for=60,
        metadata={"variant": variant, "multiple": multiple, "config": json.dumps(config),
                  "directions": "AtoB,BtoA" if reverse is not None else "AtoB"},
    )
    return info
