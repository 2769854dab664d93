"""A worker node hosting a trainer shard (and, by the custom resources, whatever else it holds) is
removed mid-run from a ray.cluster_utils.Cluster; the run completes. No other node has room for a
trainer, so the trainer group finishes smaller (the survivor carries the lost shard's part, the
replacement stays pending); the inference server is replaced on the node that has room (or, when the
inference service was on the node too, the service's replacement starts new servers where there is
room). node_loss_job.py runs the cluster in a process of its own."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def test_removing_a_node_mid_run_the_trainers_go_on_smaller_and_the_run_completes(tiny_model, tmp_path, cluster_job):
    result = cluster_job("node_loss_job.py", tiny_model, tmp_path, 900)
    removed = result["removed"]
    assert any("/trainer/" in name for name in removed), removed
    noticed = {e["actor"] for e in result["events"] if e["kind"] in ("lost", "hung", "replaced") and "actor" in e}
    kinds = [(e["kind"], e["role"]) for e in result["events"]]
    assert ("resized", "trainer") in kinds and ("joined", "trainer") not in kinds, result["events"]
    # every actor of the node that the rest of the run called was noticed (an inference server's
    # replacement may still be starting when the short run ends; the pool routed around it). The
    # inference service owns its servers: if it was on the node, its replacement brought new ones
    service_lost = any("/service/" in name for name in removed)
    for name in removed:
        role = name.split("/")[1]
        if role in ("trainer", "tasks", "broadcaster", "service", "evaluator") or (role == "inference" and not service_lost):
            assert name in noticed, (name, result["events"])
    if service_lost:
        assert ("replaced", "service") in kinds, result["events"]
    assert result["summary"]["rl_steps"] == 6 and result["summary"]["pretrain_steps"] == 12
