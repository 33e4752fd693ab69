"""`img2img stack status` says what runs on each Ray node, from its worker processes' titles."""

import pytest

from cluster.stack_join import NodeInfo, running_name


@pytest.mark.parametrize("cmdline, name", [
    (["ray::RayTrainWorker.train_fn"], "RayTrainWorker"),
    (["ray::ServeReplica:img2img:Enhancer"], "ServeReplica:img2img:Enhancer"),
    (["ray::MapWorker(MapBatches(Scorer)).submit"], "Scorer"),
    (["ray::ReadParquet->MapBatches(DecodeBatch)"], "DecodeBatch"),
    (["ray::IDLE"], None),
    (["/usr/bin/python3", "-m", "ray.util.client.server"], None),
    ([""], None),
    ([], None),
])
def test_a_worker_process_is_named_by_what_it_runs(cmdline, name):
    assert running_name(cmdline) == name


def test_a_node_describes_what_runs_on_it_or_a_dash():
    node = NodeInfo("n", "127.0.0.1", False, True, 2, 0, 2, 3, {"ServeReplica:img2img:Enhancer": 1, "Scorer": 2})
    assert node.describe_running() == "2 Scorer, 1 ServeReplica:img2img:Enhancer"  # by name
    assert NodeInfo("n", "127.0.0.1", True, True, 4, 0, 4, 0).describe_running() == "-"
    assert node.to_dict()["running"] == {"ServeReplica:img2img:Enhancer": 1, "Scorer": 2}
