"""Trainer shards follow the nodes: a run with `placement.trainer.min_replicas=1` starts on the one
node with room, grows when a node with room is added, shrinks when it is removed, and ends with the
weights of a fixed group of two (elastic_job.py runs the cluster in a process of its own)."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def test_trainers_grow_and_shrink_with_nodes_and_the_weights_match_a_fixed_group(tiny_model, tmp_path, cluster_job):
    result = cluster_job("elastic_job.py", tiny_model, tmp_path, 600)
    assert result["fixed_shards"] == [2] * 12
    # 1 shard until the node is added before step 3, 2 until it is removed at step 8, then 1 again
    assert result["elastic_shards"] == [1] * 3 + [2] * 5 + [1] * 4, result["elastic_shards"]
    kinds = [e["kind"] for e in result["events"]]
    assert kinds.count("joined") == 1 and kinds.count("resized") == 1, result["events"]
    assert result["max_difference"] == 0.0, "2 parts on 1 or 2 shards: the same maths, bit for bit"
