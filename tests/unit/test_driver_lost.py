"""A job whose driver died with its node is said in one line with what continues it; every other
end of a job is left as Ray says it. Ray's own ActorDiedError text, built by Ray's class."""

from __future__ import annotations

import pytest
from ray.core.generated.common_pb2 import ActorDiedErrorContext
from ray.exceptions import ActorDiedError

from jobs.driver_lost import lost_driver, next_step


def _supervisor_died(ip: str = "127.0.0.2") -> str:
    ctx = ActorDiedErrorContext(class_name="JobSupervisor", actor_id=b"\x01" * 16, pid=4242,
                                name="_ray_internal_job_actor_raysubmit_x", node_ip_address=ip,
                                error_message="The actor died because its node has died.")
    return f"Job supervisor actor died: {ActorDiedError(ctx)}"


def test_a_supervisor_that_died_with_its_node_names_the_node():
    assert lost_driver(_supervisor_died("10.0.0.7")) == (
        "the node running the job's driver at 10.0.0.7 was lost (Ray Jobs does not restart a driver)")


@pytest.mark.parametrize("message", [
    "", "Job entrypoint command failed with exit code 1, last available logs: ...",
    "Job supervisor actor could not be scheduled: no node has the resources",
    "runtime_env setup failed: pip", "Job was stopped",
])
def test_other_ends_of_a_job_are_not_a_lost_driver(message):
    assert lost_driver(message) is None


@pytest.mark.parametrize("meta, checkpoint, expected", [
    ({"img2img": "train", "dataset": "photos", "run_id": "r1"}, 40,
     "resume it from its checkpoint at step 40: img2img train -d photos --resume r1"),
    ({"img2img": "train", "dataset": "photos", "run_id": "r1"}, None,
     "resume it from its last checkpoint (step 0 if none was held): img2img train -d photos --resume r1"),
    ({"img2img": "search", "dataset": "photos", "run_id": "s1"}, None,
     "resume it (finished trials are kept): img2img tune -d photos --resume s1"),
    ({"img2img": "batch"}, None, "run the same `img2img batch` command again: the outputs already written are skipped"),
    ({"img2img": "pipeline"}, None, "run the same `img2img pipeline run` again: finished steps are cache hits"),
    ({"img2img": "schedule"}, None, "schedule it again: `img2img pipeline schedule ...`"),
    ({"img2img": "eval"}, None, "run the same `img2img eval` command again"),
    ({}, None, "submit it again"),
])
def test_the_next_step_fits_the_kind_of_job(meta, checkpoint, expected):
    assert next_step(meta, checkpoint) == expected
