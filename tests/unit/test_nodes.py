"""`img2img stack status` says what runs on each Ray node, from its live actors' classes."""

import pytest

from cluster.stack_join import NodeInfo, running_name


@pytest.mark.parametrize("class_name, name", [
    ("RayTrainWorker", "RayTrainWorker"),
    ("ServeReplica:img2img:Enhancer", "ServeReplica:img2img:Enhancer"),
    ("MapWorker(MapBatches(Scorer))", "Scorer"),
    ("_StatsActor", "_StatsActor"),
    ("", None),
])
def test_an_actor_is_named_by_what_it_runs(class_name, name):
    assert running_name(class_name) == name


def test_a_node_describes_what_runs_on_it_or_a_dash():
    node = NodeInfo("n", "127.0.0.1", False, True, 2, 0, 2, 3, {"ServeReplica:img2img:Enhancer": 1, "Scorer": 2})
    assert node.describe_running() == "2 Scorer, 1 ServeReplica:img2img:Enhancer"  # by name
    assert NodeInfo("n", "127.0.0.1", True, True, 4, 0, 4, 0).describe_running() == "-"
    assert node.to_dict()["running"] == {"ServeReplica:img2img:Enhancer": 1, "Scorer": 2}
