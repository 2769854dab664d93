"""Elastic trainers on a ray.cluster_utils.Cluster: the head has no `trainer` slot and one worker node
has one, so with `placement.trainer.min_replicas=1` pre-training starts on one shard carrying both
parts; a second worker node with a slot is added (its shard joins the group between steps), then
removed (the group goes on with one shard again). The same steps on a fixed group of two shards
(no custom resources) give the weights to compare. Run as a script by test_elastic_trainers.py;
prints one JSON line: the shards at each step, the events, and the largest weight difference."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from actors.data_blender import DataBlender
from runtime.core.cluster import actor_name
from runtime.core.config import load_config
from runtime.pools.trainer_group import TrainerGroup
from runtime.supervision.events import EventLog, read_events
from runtime.supervision.role import Role
from runtime.supervision.supervisor import Supervisor

STEPS, JOIN_AT, LEAVE_AT = 12, 3, 8


def pretrain(model: str, run_dir: Path, name: str, overrides: list[str], cluster: Cluster | None) -> dict:
    cfg = load_config("default", [f"model.path={model}", f"experiment.name={name}", f"experiment.run_dir={run_dir}",
                                  "data.seq_len=64", "data.batch_size=8", "train.warmup_steps=2",
                                  f"train.total_steps={STEPS}", "supervision.health_timeout_s=3", *overrides])
    sup = Supervisor(cfg.supervision, EventLog(run_dir, name))
    blender = actor_name(name, "blender", 0)
    sup.spawn(Role("blender", 0, blender, DataBlender, (cfg.data, cfg.experiment.seed, str(run_dir), model),
                   {"max_concurrency": 16, "resources": {"head": 0.01}}))
    ray.get(sup.handle(blender).setup.remote(), timeout=120)
    group = TrainerGroup(cfg, model, sup).start()
    shards, added = [], None
    try:
        for step in range(STEPS):
            if cluster is not None and step == JOIN_AT:
                added = cluster.add_node(num_cpus=2, resources={"trainer": 1})
                ray.get(list(group.spares.values()), timeout=120)  # up on the new node: it joins before this step
            if cluster is not None and step == LEAVE_AT:
                remove_node_of(cluster, group.members[-1], added)
            group.train_step(blender, step)
            shards.append(len(group.members))
        states = ray.get([s.weights.remote() for s in group.shards], timeout=60)
    finally:
        group.shutdown()
        sup.stop(5)
    return {"shards": shards, "weights": states[0], "events": read_events(run_dir)}


def remove_node_of(cluster: Cluster, actor: str, expected) -> None:
    """Remove the node `actor` runs on (the one added); return once the actor's process is gone."""
    found = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True) if a.name == actor)
    assert found.node_id == expected.node_id, "the shard that joined runs on the node that was added"
    cluster.remove_node(expected, allow_graceful=False)
    deadline = time.monotonic() + 60
    while process_alive(found.pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{actor} (pid {found.pid}) still runs 60 s after its node was removed")
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """Running, not gone or a zombie (the nodes of a cluster_utils Cluster are processes on this machine)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def main(model: str, root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"head": 1}})
    cluster.add_node(num_cpus=2, resources={"trainer": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    fixed = pretrain(model, Path(root) / "fixed", "fixed", [], None)
    elastic = pretrain(model, Path(root) / "elastic", "elastic",
                       ["placement.trainer.min_replicas=1", "placement.trainer.resources={trainer: 1}"], cluster)
    difference = max(float(np.abs(fixed["weights"][k] - elastic["weights"][k]).max()) for k in fixed["weights"])
    print(json.dumps({"fixed_shards": fixed["shards"], "elastic_shards": elastic["shards"],
                      "events": elastic["events"], "max_difference": difference}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
