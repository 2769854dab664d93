"""The main job on a ray.cluster_utils.Cluster (head plus two worker nodes; each worker has one
`trainer` and one `inference` slot of custom resources, the head one `inference` slot); once RL has
begun, the worker node hosting trainer 1 is removed: no trainer slot is left for a replacement, one
inference slot is. Run as a script by test_node_loss.py (a cluster of its own, apart from the test session's);
prints one JSON line: the run's events, the removed node's actors, and the summary."""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from runtime.core.config import load_config
from runtime.jobs import driver


def remove_the_node_of(cluster: Cluster, actor: str, run_dir: Path, out: dict) -> None:
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and '"stage": "rl"' in metrics.read_text()):
        time.sleep(0.2)
    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)]
    node_id = next(a.node_id for a in alive if a.name == actor)
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    out["removed"] = sorted(a.name for a in alive if a.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)


def main(model: str, run_dir: str) -> None:
    slots = {"trainer": 1, "inference": 1}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"inference": 1}})
    for _ in range(2):
        cluster.add_node(num_cpus=4, resources=slots)
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = load_config("default", [f"model.path={model}", f"experiment.run_dir={run_dir}", "experiment.name=nodeloss",
                                  "train.total_steps=12", "rl.steps=6", "rl.eval_tasks=8", "rl.eval_samples=2",
                                  "placement.trainer.resources={trainer: 1}", "placement.inference.resources={inference: 1}",
                                  "supervision.health_timeout_s=3"])
    out: dict = {}
    target = threading.Thread(target=lambda: remove_the_node_of(cluster, pick_trainer(), Path(run_dir), out), daemon=True)
    target.start()
    result = driver.run(cfg)
    target.join(timeout=60)
    events = [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]
    print(json.dumps({"removed": out.get("removed"), "events": events, "summary": result.summary}))
    ray.shutdown()
    cluster.shutdown()


def pick_trainer() -> str:
    """Trainer 1, once both shards are up (each on a worker node: the head has no trainer slot)."""
    while True:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        trainers = sorted(a.name for a in alive if a.name and "/trainer/" in a.name)
        if len(trainers) == 2:
            return trainers[1]
        time.sleep(0.2)


if __name__ == "__main__":
    main(*sys.argv[1:])
